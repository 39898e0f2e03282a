"""Asking an OpenAI-compatible engine how it is doing: ``/metrics`` and ``/v1/models`` over HTTP.

Every way the engine can fail to answer usefully (refused, timed out, an error status, a body
that is not metrics or not a model list, an oversized body) becomes one exception,
:class:`EngineUnavailable`, whose message says which, so the agent reports the engine as
unreachable and logs why instead of dying.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from tdn.agent.scrape import EngineMetrics, MetricsError, parse_metrics

# A /metrics page with many models or LoRA adapters runs to a few MB; far more means trouble.
MAX_BODY_BYTES = 16 * 1024 * 1024


class EngineUnavailable(Exception):
    """The engine could not be scraped; the message is the reason, fit for a log line."""


@dataclass(frozen=True, slots=True)
class EngineScrape:
    """What one visit to the engine found."""

    metrics: EngineMetrics
    models: tuple[str, ...]


class EngineClient:
    """Scrapes one engine through a session the caller owns (and closes)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url

    @property
    def metrics_url(self) -> str:
        return f"{self._base}/metrics"

    @property
    def models_url(self) -> str:
        return f"{self._base}/v1/models"

    async def scrape(self, timeout_s: float) -> EngineScrape:
        """Read both endpoints within ``timeout_s`` in all; raise :class:`EngineUnavailable`
        with the reason if either fails."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._scrape()
        except TimeoutError:
            raise EngineUnavailable(
                f"{self._base}: no complete answer within {timeout_s:g}s"
            ) from None

    async def _scrape(self) -> EngineScrape:
        body, content_type = await self._get(self.metrics_url)
        try:
            metrics = parse_metrics(body.decode("utf-8"), content_type)
        except UnicodeDecodeError:
            raise EngineUnavailable(f"{self.metrics_url}: body is not UTF-8 text") from None
        except MetricsError as exc:
            raise EngineUnavailable(f"{self.metrics_url}: {exc}") from None
        models_body, _ = await self._get(self.models_url)
        try:
            models = parse_model_list(models_body)
        except ValueError as exc:
            raise EngineUnavailable(f"{self.models_url}: {exc}") from None
        return EngineScrape(metrics=metrics, models=models)

    async def _get(self, url: str) -> tuple[bytes, str]:
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise EngineUnavailable(f"{url}: HTTP {resp.status}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise EngineUnavailable(f"{url}: body larger than {MAX_BODY_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks), resp.headers.get("Content-Type", "")
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None


def parse_model_list(body: bytes) -> tuple[str, ...]:
    """The model ids in an OpenAI ``GET /v1/models`` answer; ValueError if it is not one."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError('not an OpenAI model list (no "data" array)')
    ids: list[str] = []
    for item in data:
        model_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model entry {item!r} has no string id")
        if model_id not in ids:
            ids.append(model_id)
    return tuple(ids)
