"""What the operations tools print: text from Kafka with nothing that drives a terminal."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.escaping import printable, printable_json

# The bidirectional classes of the embedding, override and isolate characters.
_BIDI_CONTROLS = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}


def terminal_controls(text: str) -> list[str]:
    """The characters of `text` a terminal could act on, or that reorder what it shows."""
    return [
        c
        for c in text
        if unicodedata.category(c) in {"Cc", "Cs", "Zl", "Zp"}
        or unicodedata.bidirectional(c) in _BIDI_CONTROLS
    ]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("a\nb\r\tc\x00", "a\\nb\\r\\tc\\x00"),
        ("\x7f", "\\x7f"),
        ("\x9b31m", "\\x9b31m"),
        ("\x85", "\\x85"),
        ("invoice\u202efdp.exe", "invoice\\u202efdp.exe"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),
        ("one\u2028two", "one\\u2028two"),
        ("\udcff", "\\udcff"),
    ],
)
def test_controls_are_escaped(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_text_is_left_as_it_is() -> None:
    text = 'VIP Kunden (Größe ≥ 5) 日本 😀 path\\to {"a": "\\u001b"} ~'
    assert printable(text) == text


# Surrogates too, which Hypothesis leaves out by default: argv can hold them.
_ANY_TEXT = st.text(st.characters(exclude_categories=()))


@settings(max_examples=150, deadline=None)
@given(_ANY_TEXT)
def test_no_text_prints_a_control(text: str) -> None:
    assert terminal_controls(printable(text)) == []


@settings(max_examples=150, deadline=None)
@given(_ANY_TEXT.filter(lambda t: not terminal_controls(t)))
def test_text_without_controls_is_unchanged(text: str) -> None:
    assert printable(text) == text


def json_data(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


@settings(max_examples=100, deadline=None)
@given(json_data(st.text()))
def test_a_line_of_json_stays_the_same_json(data: Any) -> None:
    shown = printable_json(orjson.dumps(data).decode())

    assert terminal_controls(shown) == []
    assert orjson.loads(shown) == data


@settings(max_examples=100, deadline=None)
@given(json_data(_ANY_TEXT))
def test_indented_json_stays_the_same_json(data: Any) -> None:
    lines = json.dumps(data, indent=2, ensure_ascii=False).split("\n")
    shown = [printable_json(line) for line in lines]

    assert all(terminal_controls(line) == [] for line in shown)
    assert json.loads("\n".join(shown)) == data
