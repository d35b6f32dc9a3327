"""TextStream: whole characters only, stop strings never emitted, chunking never matters."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from llorch_worker.textstream import Step, StopFilter, TextStream


def run(chunks: list[bytes], stops: list[str]) -> tuple[list[str], bool]:
    """Feed chunks like an engine would; return the published pieces and whether it stopped."""
    stream = TextStream(stops)
    pieces: list[str] = []
    for chunk in chunks:
        step = stream.feed(chunk)
        pieces.append(step.text)
        if step.stopped:
            return pieces, True
    last = stream.finish()
    pieces.append(last.text)
    return pieces, last.stopped


def reference(text: str, stops: list[str]) -> str:
    """Cut where a character-by-character scan first completes a stop string."""
    for end in range(len(text) + 1):
        starts = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if starts:
            return text[: min(starts)]
    return text


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_multibyte_character_split_across_tokens_is_emitted_whole() -> None:
    stream = TextStream([])
    euro = "€".encode()
    assert stream.feed(euro[:1]) == Step("", stopped=False)
    assert stream.feed(euro[1:2]) == Step("", stopped=False)
    assert stream.feed(euro[2:] + b"x") == Step("€x", stopped=False)


def test_invalid_bytes_become_replacement_characters_not_errors() -> None:
    stream = TextStream([])
    assert stream.feed(b"a\xff") == Step("a\ufffd", stopped=False)
    assert stream.feed(b"\xe2\x82") == Step("", stopped=False)
    assert stream.finish() == Step("\ufffd", stopped=False)


def test_possible_stop_prefix_is_held_then_released_when_it_diverges() -> None:
    stops = StopFilter(["</end>"])
    assert stops.feed("hello </e") == Step("hello ", stopped=False)
    assert stops.feed("x") == Step("</ex", stopped=False)


def test_stop_string_spanning_tokens_is_never_emitted() -> None:
    pieces, stopped = run([b"one\n", b"Us", b"er: more"], ["User:"])
    assert stopped
    assert "".join(pieces) == "one\n"


def test_held_prefix_is_flushed_when_generation_ends_without_stop() -> None:
    pieces, stopped = run([b"abc<"], ["<stop>"])
    assert not stopped
    assert pieces == ["abc", "<"]


def test_first_completed_stop_wins_over_an_earlier_starting_longer_one() -> None:
    assert run([b"abcd"], ["abcd", "bc"]) == (["a"], True)
    assert run([b"a", b"b", b"c", b"d"], ["abcd", "bc"]) == (["", "", "a"], True)


def test_empty_stop_strings_are_ignored() -> None:
    assert run([b"ab"], [""]) == (["ab", ""], False)


text_alphabet = st.sampled_from(list("ab€ \n😀é<>"))
stop_lists = st.lists(st.text(text_alphabet, max_size=4), max_size=3)


@settings(deadline=None)  # no timing thresholds in tests
@given(st.text(text_alphabet, max_size=40), stop_lists, st.lists(st.integers(0, 200)))
def test_any_chunking_gives_the_reference_text(text: str, stops: list[str], cuts: list[int]):
    pieces, stopped = run(split(text.encode(), cuts), stops)
    expected = reference(text, stops)
    assert "".join(pieces) == expected
    assert stopped == (expected != text)
    assert "\ufffd" not in "".join(pieces)  # valid UTF-8 in, whole characters out


@settings(deadline=None)  # no timing thresholds in tests
@given(st.text(text_alphabet, max_size=40), stop_lists, st.lists(st.integers(0, 200)))
def test_hold_back_is_bounded_by_the_longest_stop(text: str, stops: list[str], cuts: list[int]):
    stream = TextStream(stops)
    longest = max((len(s) for s in stops), default=0)
    fed, emitted = b"", ""
    for chunk in split(text.encode(), cuts):
        fed += chunk
        step = stream.feed(chunk)
        emitted += step.text
        if step.stopped:
            return
        decoded = fed.decode("utf-8", errors="ignore")
        assert decoded.startswith(emitted)
        assert len(decoded) - len(emitted) <= max(longest - 1, 0)
