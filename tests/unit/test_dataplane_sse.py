"""Reading an OpenAI SSE stream while relaying it (no network): whole events only, finish and
[DONE] seen, usage metered and hidden when only the sidecar asked for it, garbled chunks caught,
continuations rewritten into the first answer; and the request bodies the sidecar writes."""

from __future__ import annotations

import json
from typing import Any

from dataplane_support import FIXTURES, STREAM_FIXTURE, sse_events

from tdn.dataplane import openai_api
from tdn.dataplane.continuation import continuation_body, estimate_prompt_tokens
from tdn.dataplane.metering import usage_from_body
from tdn.dataplane.sse import StreamScan, StreamTotals
from tdn.sim.textgen import chat_prompt_text, count_tokens


def scan(**kwargs: Any) -> StreamScan:
    return StreamScan(StreamTotals(), **{"client_wants_usage": True, **kwargs})


def chunk(content: str | None = None, finish: str | None = None, *, rid: str = "r1",
          role: bool = False, usage: dict[str, int] | None = None) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    doc: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": 1,
                           "model": "m",
                           "choices": [] if usage else [{"index": 0, "delta": delta,
                                                         "finish_reason": finish}]}
    if usage:
        doc["usage"] = usage
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def test_the_recorded_openai_stream_is_relayed_unchanged_when_fed_in_odd_pieces() -> None:
    s = scan()
    out = b"".join(s.feed(STREAM_FIXTURE[i:i + 37]) for i in range(0, len(STREAM_FIXTURE), 37))
    assert out == STREAM_FIXTURE
    assert (s.done, s.finished, s.output_events, s.broken) == (True, True, 30, None)
    assert s.usage is not None and s.usage["completion_tokens"] == 30
    assert s.totals.response_id == "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL"


def test_an_unfinished_event_is_held_until_its_end_arrives() -> None:
    s = scan()
    whole = chunk("Hi")
    assert s.feed(whole[:20]) == b""
    assert s.feed(whole[20:]) == whole


def test_usage_chunk_is_metered_but_dropped_when_the_client_did_not_ask_for_it() -> None:
    s = scan(client_wants_usage=False)
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    out = s.feed(chunk("Hi") + chunk(finish="stop") + chunk(usage=usage) + b"data: [DONE]\n\n")
    assert b'"usage"' not in out
    assert sse_events(out)[-1] == b"data: [DONE]"
    assert s.usage == usage


def test_a_chunk_that_is_not_json_breaks_the_stream_and_is_not_relayed() -> None:
    s = scan()
    out = s.feed(chunk("Hi") + b'data: {"id":"r1","choices":[{"delta":{"content":"trunc\n\n'
                 + chunk("more"))
    assert out == chunk("Hi")
    assert s.broken is not None and s.broken.reason == "malformed_chunk"


def test_an_error_event_breaks_the_stream() -> None:
    s = scan()
    s.feed(b'data: {"error":{"message":"engine died","type":"server_error"}}\n\n')
    assert s.broken is not None and s.broken.reason == "stream_error"
    assert "engine died" in s.broken.detail


def test_role_chunk_and_comments_are_not_output_so_the_answer_is_not_committed_yet() -> None:
    s = scan()
    s.feed(b": keep-alive\n\n" + chunk(role=True))
    assert not s.substantive
    s.feed(chunk("Hi"))
    assert s.substantive


def test_spaced_json_and_crlf_line_ends_are_understood() -> None:
    s = scan()
    out = s.feed(b'data: {"id": "r", "choices": [{"delta": {"content": "x"}, '
                 b'"finish_reason": "stop"}]}\r\n\r\n')
    assert out.endswith(b"\n\n")
    assert (s.output_events, s.finished) == (1, True)


def test_a_continuation_is_rewritten_into_the_first_answer() -> None:
    totals = StreamTotals()
    first = StreamScan(totals, client_wants_usage=True, track_text=True)
    first.feed(chunk(role=True, rid="orig") + chunk("Hello", rid="orig") + chunk(" wor",
                                                                                  rid="orig"))
    assert totals.text == "Hello wor"
    second = StreamScan(totals, client_wants_usage=True, track_text=True, segment=1,
                        splice_base=(7, totals.output_events))
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    out = second.feed(chunk(role=True, rid="new") + chunk("ld", rid="new")
                      + chunk(finish="stop", rid="new") + chunk(usage=usage, rid="new")
                      + b"data: [DONE]\n\n")
    docs = [json.loads(e.removeprefix(b"data: ")) for e in sse_events(out)[:-1]]
    assert {d["id"] for d in docs} == {"orig"}
    assert not any("role" in c.get("delta", {}) for d in docs for c in d["choices"])
    assert docs[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5,
                                 "total_tokens": 12}
    assert second.usage == usage  # the backup is metered by its own usage
    assert totals.text == "Hello world"


def test_continuation_body_prefills_the_partial_answer_as_vllm_expects() -> None:
    fixture = json.loads((FIXTURES / "vllm-continue-final-message.json").read_text())
    doc = {"model": "m", "messages": [fixture["messages"][0]], "stream": True,
           "max_tokens": 10, "echo": True}
    body = continuation_body(doc, fixture["messages"][1]["content"], 4)
    assert body is not None
    sent = json.loads(body)
    assert sent["messages"] == fixture["messages"]
    for key in ("continue_final_message", "add_generation_prompt"):
        assert sent[key] == fixture[key]
    assert "echo" not in sent
    assert sent["max_tokens"] == 6
    assert sent["stream_options"] == {"include_usage": True}
    assert continuation_body({**doc, "max_tokens": 4}, "partial", 4) is None
    assert continuation_body({**doc, "n": 2}, "partial", 1) is None
    assert continuation_body({"model": "m", "prompt": "x"}, "partial", 1) is None


def test_prompt_estimate_counts_messages_as_role_and_content_four_characters_a_token() -> None:
    messages = [("system", "Be brief."), ("user", "What's the weather in Frankfurt today?")]
    doc = {"messages": [{"role": r, "content": c} for r, c in messages]}
    assert estimate_prompt_tokens(doc) == count_tokens(chat_prompt_text(messages))
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}) == 3


def test_the_usage_chunk_is_requested_upstream_by_a_byte_splice_keeping_the_clients_bytes(
        ) -> None:
    raw = b'  {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    parsed = openai_api.parse_request(openai_api.CHAT, raw)
    body = parsed.upstream_body()
    assert body.endswith(raw[3:])
    assert json.loads(body)["stream_options"] == {"include_usage": True}
    asked = openai_api.parse_request(
        openai_api.CHAT, b'{"model":"m","messages":[],"stream":true,'
                         b'"stream_options":{"include_usage":true}}')
    assert asked.upstream_body() is asked.body
    other = openai_api.parse_request(
        openai_api.CHAT, b'{"model":"m","messages":[],"stream":true,"stream_options":{}}')
    assert json.loads(other.upstream_body())["stream_options"] == {"include_usage": True}
    plain = openai_api.parse_request(openai_api.CHAT, b'{"model":"m","messages":[]}')
    assert plain.upstream_body() is plain.body


def test_usage_is_read_from_the_end_of_a_body_without_parsing_all_of_it() -> None:
    body = json.dumps({"id": "x", "choices": [{"message": {"content": '"usage": {"no": 1}'}}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 7}}).encode()
    assert usage_from_body(body) == {"prompt_tokens": 5, "completion_tokens": 7}
    assert usage_from_body(b'{"data": []}') is None
    assert usage_from_body(b'{"usage": {"prompt_tokens": ') is None
