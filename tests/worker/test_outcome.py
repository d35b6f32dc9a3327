"""The per-token rule of one sequence: end-of-generation, stop strings, max_tokens."""

from __future__ import annotations

from llorch_worker.outcome import Finished, after_token
from llorch_worker.textstream import TextStream


def test_end_of_generation_ends_unseen_and_releases_the_held_text() -> None:
    text = TextStream(["STOP"])
    assert after_token(text, b"a ST", 1, 10, 3) == ("a ", None)  # "ST" may begin the stop
    assert after_token(text, None, 2, 10, 3) == (None, Finished("stop", 3, "ST"))


def test_a_stop_string_ends_the_sequence_and_is_never_shown() -> None:
    text = TextStream(["STOP"])
    assert after_token(text, b"one ST", 1, 10, 2) == ("one ", None)
    assert after_token(text, b"OP two", 2, 10, 2) == ("", Finished("stop", 2, ""))


def test_max_tokens_ends_with_length_and_flushes_the_held_text() -> None:
    text = TextStream(["END"])
    euro = "€".encode()
    assert after_token(text, euro[:2], 1, 2, 1) == ("", None)  # half a character: held back
    assert after_token(text, euro[2:] + b" E", 2, 2, 1) == ("€ ", Finished("length", 1, "E"))


def test_the_stop_wins_over_length_on_the_last_token() -> None:
    text = TextStream(["!"])
    assert after_token(text, b"hi!", 1, 1, 1) == ("hi", Finished("stop", 1, ""))
