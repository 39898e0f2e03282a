"""Admission into the simulated engine's batch: a bounded running set and a FIFO waiting queue.

:class:`Admission` is the pure rule (no clock, no asyncio), shared by the real-time server and by
the virtual-time model in :mod:`tdn.sim.timing`. A request runs when fewer than
``max_concurrency`` requests run and its prompt fits in the KV cache next to theirs (an idle
engine always admits); otherwise it waits in arrival order, and a waiting head blocks those behind
it, as vLLM's first-come-first-served scheduler does. :class:`EngineGate` turns the rule into
an asyncio context manager that a request handler holds for the time it occupies the engine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Admission:
    """FIFO admission into a batch bounded by request count and KV-cache tokens."""

    def __init__(self, max_concurrency: int, kv_capacity_tokens: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if kv_capacity_tokens < 1:
            raise ValueError(f"kv_capacity_tokens must be at least 1, got {kv_capacity_tokens}")
        self.max_concurrency = max_concurrency
        self.kv_capacity_tokens = kv_capacity_tokens
        self._running: dict[int, int] = {}  # ticket -> KV tokens it holds
        self._waiting: deque[tuple[int, int]] = deque()  # (ticket, prompt tokens)
        self._kv_tokens = 0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_tokens(self) -> int:
        return self._kv_tokens

    @property
    def kv_usage(self) -> float:
        """Share of the KV cache held by running requests, 0..1 (growth past capacity is capped)."""
        return min(self._kv_tokens / self.kv_capacity_tokens, 1.0)

    def is_running(self, ticket: int) -> bool:
        return ticket in self._running

    def waiting_tickets(self) -> list[int]:
        return [ticket for ticket, _ in self._waiting]

    def submit(self, ticket: int, prompt_tokens: int) -> bool:
        """Queue a request; True when it runs at once (nobody is waiting and it fits)."""
        if not self._waiting and self._fits(prompt_tokens):
            self._start(ticket, prompt_tokens)
            return True
        self._waiting.append((ticket, prompt_tokens))
        return False

    def grow(self, ticket: int, tokens: int) -> None:
        """A running request generated ``tokens`` more tokens, which now sit in the KV cache."""
        if ticket in self._running:
            self._running[ticket] += tokens
            self._kv_tokens += tokens

    def finish(self, ticket: int) -> list[int]:
        """A running request left the engine; return the tickets that start as a result."""
        held = self._running.pop(ticket, None)
        if held is None:
            raise KeyError(f"ticket {ticket} is not running")
        self._kv_tokens -= held
        return self._admit()

    def withdraw(self, ticket: int) -> list[int]:
        """A waiting request gave up (its client left); return the tickets that start now."""
        self._waiting = deque(item for item in self._waiting if item[0] != ticket)
        return self._admit()

    def _fits(self, prompt_tokens: int) -> bool:
        if len(self._running) >= self.max_concurrency:
            return False
        return not self._running or self._kv_tokens + prompt_tokens <= self.kv_capacity_tokens

    def _start(self, ticket: int, prompt_tokens: int) -> None:
        self._running[ticket] = prompt_tokens
        self._kv_tokens += prompt_tokens

    def _admit(self) -> list[int]:
        started = []
        while self._waiting and self._fits(self._waiting[0][1]):
            ticket, prompt_tokens = self._waiting.popleft()
            self._start(ticket, prompt_tokens)
            started.append(ticket)
        return started


class EngineSlot:
    """A request's place in the running batch, held inside :meth:`EngineGate.slot`."""

    __slots__ = ("_admission", "queue_wait_s", "ticket")

    def __init__(self, admission: Admission, ticket: int, queue_wait_s: float) -> None:
        self._admission = admission
        self.ticket = ticket
        self.queue_wait_s = queue_wait_s

    def grow(self, tokens: int) -> None:
        self._admission.grow(self.ticket, tokens)


class EngineGate:
    """Asyncio front of :class:`Admission`: waiting requests sleep on a future until admitted."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._tickets = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[None]] = {}

    @asynccontextmanager
    async def slot(self, prompt_tokens: int) -> AsyncIterator[EngineSlot]:
        """Wait (FIFO) for a place in the batch, hold it for the body, then give it back."""
        loop = asyncio.get_running_loop()
        ticket = next(self._tickets)
        queued_at = loop.time()
        if not self.admission.submit(ticket, prompt_tokens):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters[ticket] = waiter
            try:
                await waiter
            except asyncio.CancelledError:
                # The client left while queued. It may have been admitted in the same loop
                # iteration as the cancellation, in which case its place must be given back.
                self._waiters.pop(ticket, None)
                if self.admission.is_running(ticket):
                    self._wake(self.admission.finish(ticket))
                else:
                    self._wake(self.admission.withdraw(ticket))
                raise
        try:
            yield EngineSlot(self.admission, ticket, loop.time() - queued_at)
        finally:
            self._wake(self.admission.finish(ticket))

    def _wake(self, tickets: list[int]) -> None:
        for ticket in tickets:
            waiter = self._waiters.pop(ticket, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
