"""The simulator's stand-in model: token counting, deterministic words and embeddings."""

from __future__ import annotations

import math
import struct

from tdn.sim.textgen import (
    chat_prompt_text,
    count_tokens,
    embed,
    generate,
    pack_float32,
    target_length,
    text_seed,
)


def test_token_count_is_about_four_characters_per_token_and_never_zero() -> None:
    assert count_tokens("") == 1
    assert count_tokens("abc") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("x" * 400) == 100


def test_chat_prompt_renders_one_role_line_per_message() -> None:
    text = chat_prompt_text([("system", "be brief"), ("user", "hi")])
    assert text == "system: be brief\nuser: hi\n"


def test_same_prompt_generates_same_words_and_different_prompts_differ() -> None:
    a1 = generate("user: what is TDN?\n", None, 8, 32)
    a2 = generate("user: what is TDN?\n", None, 8, 32)
    b = generate("user: something else entirely\n", None, 8, 32)
    assert a1 == a2
    assert a1.text != b.text


def test_natural_length_stops_with_stop_and_max_tokens_cuts_with_length() -> None:
    natural = generate("user: hello\n", None, 8, 32)
    assert 8 <= natural.tokens <= 32
    assert natural.finish_reason == "stop"
    capped = generate("user: hello\n", natural.tokens - 1, 8, 32)
    assert capped.tokens == natural.tokens - 1
    assert capped.finish_reason == "length"
    assert natural.text.startswith(capped.text)
    roomy = generate("user: hello\n", natural.tokens + 100, 8, 32)
    assert roomy == natural


def test_target_length_stays_in_range_for_many_seeds() -> None:
    lengths = {target_length(text_seed(str(i)), 4, 9) for i in range(200)}
    assert lengths == set(range(4, 10))


def test_answer_starts_without_space_but_a_continuation_starts_with_one() -> None:
    fresh = generate("user: hi\n", 5, 8, 32)
    cont = generate("user: hi\n", 5, 8, 32, continuation=True)
    assert not fresh.text.startswith(" ")
    assert cont.text.startswith(" ")
    assert all(piece.startswith(" ") for piece in fresh.pieces[1:])


def test_embeddings_are_unit_length_deterministic_and_text_dependent() -> None:
    a = embed("the quick brown fox", 32)
    assert len(a) == 32
    assert math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-9)
    assert a == embed("the quick brown fox", 32)
    assert a != embed("the quick brown cat", 32)


def test_base64_payload_is_little_endian_float32() -> None:
    vector = [0.5, -1.0, 2.0]
    assert struct.unpack("<3f", pack_float32(vector)) == (0.5, -1.0, 2.0)
