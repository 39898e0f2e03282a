"""Streams that break after output reached the client, against real simulators: never passed off
as complete; an SSE error event and a clear end by default; with continuation, the answer is
carried on by a prefill-capable backup and spliced into one complete answer."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from dataplane_support import (
    CHAT_BODY,
    FAST_SIM,
    MODEL,
    StreamAnswer,
    make_policy,
    read_stream,
    requests_seen,
    running_sidecar,
    simulators,
)

from tdn.domain import DataPlaneSettings
from tdn.sim.faults import Fault, FaultMode
from tdn.sim.textgen import chat_prompt_text, count_tokens, generate

CUT_AFTER = 3
STREAM_BODY: dict[str, Any] = {**CHAT_BODY, "stream": True,
                               "stream_options": {"include_usage": True}}
CONTINUE = DataPlaneSettings(continuation_enabled=True)
MESSAGES = [("user", "What's the weather?")]
assert CHAT_BODY["messages"] == [{"role": r, "content": c} for r, c in MESSAGES]


def natural_answer(messages: list[tuple[str, str]], continuation: bool = False) -> list[str]:
    """The words a fast simulator answers these messages with (its text is deterministic)."""
    return list(generate(chat_prompt_text(messages), None, FAST_SIM["min_output_tokens"],
                         FAST_SIM["max_output_tokens"], continuation=continuation).pieces)


def assert_incomplete(answer: StreamAnswer, factory: str, phrase: str) -> None:
    assert answer.status == 200
    assert not answer.done, "a broken stream must not end with [DONE]"
    assert answer.error is not None, "a broken stream must end with an error event"
    assert answer.error["code"] == "upstream_stream_broken"
    assert factory in answer.error["message"]
    assert phrase in answer.error["message"]
    assert "finish_reason" not in json.dumps(answer.chunks) or not answer.finish_reasons
    last = json.loads(answer.events[-1].removeprefix(b"data: "))
    assert "error" in last


async def test_cut_stream_ends_with_an_error_event_not_a_complete_looking_answer() -> None:
    async with simulators("flaky", "backup") as sims:
        sims["flaky"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=CUT_AFTER))
        policy = make_policy("v1", {"flaky": sims["flaky"].url, "backup": sims["backup"].url},
                             [("flaky", 1.0)], [[("backup", 1.0)]], prefill={"backup"})
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
            metrics = sc.metrics.exposition().decode()
    assert_incomplete(answer, "flaky", "without a finish reason")
    assert answer.text == "".join(natural_answer(MESSAGES)[:CUT_AFTER])
    assert answer.usage is None
    # Continuation is off by default: the backup is never asked, and a broken answer is
    # never billed.
    assert requests_seen(sims["backup"]) == 0
    assert 'reason="stream_cut"' in metrics
    assert "tdn_sidecar_tokens_total{" not in metrics


async def test_openai_sdk_raises_on_a_cut_stream_from_a_simulator() -> None:
    async with simulators("flaky") as sims:
        sims["flaky"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=CUT_AFTER))
        policy = make_policy("v1", {"flaky": sims["flaky"].url}, [("flaky", 1.0)])
        async with running_sidecar(policy) as sc:
            client = openai.AsyncOpenAI(base_url=sc.proxy_url, api_key="tenant-key",
                                        max_retries=0)
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "What's the weather?"}],
                stream=True)
            received: list[str] = []
            with pytest.raises(openai.APIError):
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
            await client.close()
    assert len(received) == CUT_AFTER


async def test_cut_stream_is_continued_on_a_prefill_backup_and_spliced_into_one_answer() -> None:
    async with simulators("flaky", "backup") as sims:
        sims["flaky"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=CUT_AFTER))
        policy = make_policy("v1", {"flaky": sims["flaky"].url, "backup": sims["backup"].url},
                             [("flaky", 1.0)], [[("backup", 1.0)]], prefill={"backup"},
                             settings=CONTINUE)
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
            metrics = sc.metrics.exposition().decode()
            metered = dict(sc.meter.peek())
    prefix = "".join(natural_answer(MESSAGES)[:CUT_AFTER])
    continuation = natural_answer([*MESSAGES, ("assistant", prefix)], continuation=True)
    assert answer.status == 200
    assert answer.error is None
    assert answer.done
    assert answer.text == prefix + "".join(continuation)
    assert answer.finish_reasons == ["stop"]
    # One answer: one id, one role chunk, one usage chunk summing what the client was given.
    assert {c["id"] for c in answer.chunks} == {answer.chunks[0]["id"]}
    roles = [c for c in answer.chunks for ch in c["choices"] if "role" in ch.get("delta", {})]
    assert len(roles) == 1
    prompt = count_tokens(chat_prompt_text(MESSAGES))
    completion = CUT_AFTER + len(continuation)
    assert answer.usage == {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}
    assert [c for c in answer.chunks if c.get("usage")][-1] is answer.chunks[-1]
    assert answer.headers["x-tdn-factory"] == "flaky"
    assert 'factory="backup",model="llama-3.1-8b-instruct",result="spliced"' in metrics
    # Each factory is metered for its part: the backup by its own usage.
    assert metered[("anonymous", "flaky", MODEL, "default")].completion_tokens == CUT_AFTER
    assert metered[("anonymous", "backup", MODEL, "default")].completion_tokens == len(continuation)


async def test_backup_that_rejects_prefill_leads_to_a_clean_error_naming_the_original_cut(
        ) -> None:
    async with simulators("flaky", "no-prefill",
                          **{"no-prefill": {"supports_prefill": False}}) as sims:
        sims["flaky"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=CUT_AFTER))
        # The policy believes the backup takes a prefill; the engine answers 400.
        policy = make_policy("v1", {"flaky": sims["flaky"].url,
                                    "no-prefill": sims["no-prefill"].url},
                             [("flaky", 1.0)], [[("no-prefill", 1.0)]], prefill={"no-prefill"},
                             settings=CONTINUE)
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
    assert_incomplete(answer, "flaky", "cut the stream without a finish reason")
    assert answer.error is not None
    assert "continue_final_message" not in answer.error["message"]
    assert "no-prefill" not in answer.error["message"]
    assert requests_seen(sims["no-prefill"]) == 1


async def test_stream_idle_past_its_timeout_is_ended_with_an_error_event() -> None:
    async with simulators("stalling") as sims:
        sims["stalling"].set_fault(Fault(FaultMode.STALL_MID_STREAM, after_tokens=CUT_AFTER,
                                         seconds=30.0))
        policy = make_policy("v1", {"stalling": sims["stalling"].url}, [("stalling", 1.0)],
                             settings=DataPlaneSettings(stream_idle_timeout_s=0.5))
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
            elapsed = time.monotonic() - started
    assert_incomplete(answer, "stalling", "idle timeout")
    assert len(answer.text.split()) == CUT_AFTER
    assert elapsed < 5.0  # the stall would have lasted 30 s


async def test_default_idle_timeout_comes_from_the_factorys_ttft_not_thirty_seconds() -> None:
    async with simulators("stalling") as sims:
        sims["stalling"].set_fault(Fault(FaultMode.STALL_MID_STREAM, after_tokens=CUT_AFTER,
                                         seconds=30.0))
        # No idle timeout in the policy: 3 x 0.1 s is under the 2 s floor, so 2 s.
        policy = make_policy("v1", {"stalling": sims["stalling"].url}, [("stalling", 1.0)],
                             ttft_p99_s={"stalling": 0.1})
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
            elapsed = time.monotonic() - started
    assert_incomplete(answer, "stalling", "2 s idle timeout")
    # Bounded by the fault's 30 s otherwise; a client with 10 s of patience sees the error.
    assert elapsed < 8.0


async def test_before_a_stream_commits_the_first_byte_deadline_governs_not_the_idle_timeout(
        ) -> None:
    async with simulators("slow", "backup") as sims:
        # A 3 s prefill from a factory whose idle timeout is 2 s: the route's 20 s first-byte
        # deadline allows it, so the idle timeout must not cut the stream before its first
        # token (it applies once the answer has started).
        sims["slow"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=3.0))
        policy = make_policy("v1", {"slow": sims["slow"].url, "backup": sims["backup"].url},
                             [("slow", 1.0)], [[("backup", 1.0)]], first_byte_timeout_s=20.0,
                             ttft_p99_s={"slow": 0.1, "backup": 0.1})
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
    assert (answer.status, answer.error, answer.done) == (200, None, True)
    assert (answer.headers["x-tdn-factory"], answer.headers["x-tdn-attempts"]) == ("slow", "1")
    assert requests_seen(sims["backup"]) == 0


async def test_a_factory_that_breaks_most_streams_is_ejected_by_its_failure_rate() -> None:
    async with simulators("flaky", "backup") as sims:
        sims["flaky"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=CUT_AFTER,
                                      probability=0.7))
        policy = make_policy("v1", {"flaky": sims["flaky"].url, "backup": sims["backup"].url},
                             [("flaky", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            # A stream that commits and then breaks is one failed attempt, not a success and a
            # failure: counted twice, 70 % broken would look like 41 % failed, under the 50 %
            # failure-rate threshold, and the factory would keep cutting answers forever.
            answers = [await read_stream(url, STREAM_BODY) for _ in range(30)]
            ejected = sc.proxy.health.outlier.is_ejected("flaky")
    assert ejected
    served = [a.headers["x-tdn-factory"] for a in answers]
    assert served[-1] == "backup"
    assert requests_seen(sims["flaky"]) < 30
    for answer in answers:
        if answer.error is not None:
            assert_incomplete(answer, "flaky", "without a finish reason")


async def test_stream_idle_past_its_timeout_is_continued_when_continuation_is_on() -> None:
    async with simulators("stalling", "backup") as sims:
        sims["stalling"].set_fault(Fault(FaultMode.STALL_MID_STREAM, after_tokens=CUT_AFTER,
                                         seconds=30.0))
        policy = make_policy("v1", {"stalling": sims["stalling"].url,
                                    "backup": sims["backup"].url},
                             [("stalling", 1.0)], [[("backup", 1.0)]], prefill={"backup"},
                             settings=DataPlaneSettings(stream_idle_timeout_s=0.5,
                                                        continuation_enabled=True))
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
    prefix = "".join(natural_answer(MESSAGES)[:CUT_AFTER])
    continuation = natural_answer([*MESSAGES, ("assistant", prefix)], continuation=True)
    assert (answer.error, answer.done) == (None, True)
    assert answer.text == prefix + "".join(continuation)


# Tokens 20 ms apart reach the sidecar one read at a time, so the garbled chunk comes after the
# answer has started (a fast simulator would send it in the same read as the first tokens).
SPACED = {"itl_ms": 20.0}


async def test_malformed_chunk_is_a_mid_stream_failure_and_is_never_relayed() -> None:
    async with simulators("garbling", garbling=SPACED) as sims:
        sims["garbling"].set_fault(Fault(FaultMode.MALFORMED_CHUNK, after_tokens=CUT_AFTER))
        policy = make_policy("v1", {"garbling": sims["garbling"].url}, [("garbling", 1.0)])
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
            metrics = sc.metrics.exposition().decode()
    # read_stream json-parses every event: a relayed garbled chunk would have failed it.
    assert_incomplete(answer, "garbling", "not JSON")
    assert answer.text == "".join(natural_answer(MESSAGES)[:CUT_AFTER])
    assert 'reason="malformed_chunk"' in metrics


async def test_malformed_chunk_is_continued_on_a_prefill_backup() -> None:
    async with simulators("garbling", "backup", garbling=SPACED) as sims:
        sims["garbling"].set_fault(Fault(FaultMode.MALFORMED_CHUNK, after_tokens=CUT_AFTER))
        policy = make_policy("v1", {"garbling": sims["garbling"].url,
                                    "backup": sims["backup"].url},
                             [("garbling", 1.0)], [[("backup", 1.0)]], prefill={"backup"},
                             settings=CONTINUE)
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
    prefix = "".join(natural_answer(MESSAGES)[:CUT_AFTER])
    continuation = natural_answer([*MESSAGES, ("assistant", prefix)], continuation=True)
    assert (answer.error, answer.done) == (None, True)
    assert answer.text == prefix + "".join(continuation)


async def test_continuation_keeps_the_clients_max_tokens_for_the_whole_answer() -> None:
    async with simulators("flaky", "backup") as sims:
        sims["flaky"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=CUT_AFTER))
        policy = make_policy("v1", {"flaky": sims["flaky"].url, "backup": sims["backup"].url},
                             [("flaky", 1.0)], [[("backup", 1.0)]], prefill={"backup"},
                             settings=CONTINUE)
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions",
                                       {**STREAM_BODY, "max_tokens": 8})
    assert answer.done
    assert answer.finish_reasons == ["length"]
    assert answer.usage is not None and answer.usage["completion_tokens"] == 8
    assert len(answer.text.split()) == 8


async def test_malformed_chunk_before_anything_was_relayed_is_answered_whole_by_the_backup(
        ) -> None:
    async with simulators("garbling", "backup") as sims:
        # The garbled chunk comes before any output (only the empty role chunk precedes it):
        # the client has received nothing yet, so the backup answers from the start.
        sims["garbling"].set_fault(Fault(FaultMode.MALFORMED_CHUNK, after_tokens=0))
        policy = make_policy("v1", {"garbling": sims["garbling"].url,
                                    "backup": sims["backup"].url},
                             [("garbling", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions", STREAM_BODY)
    assert (answer.status, answer.error, answer.done) == (200, None, True)
    assert answer.headers["x-tdn-factory"] == "backup"
    assert answer.headers["x-tdn-attempts"] == "2"
    assert answer.text == "".join(natural_answer(MESSAGES))
