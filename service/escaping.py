"""Text from the wire as it may be printed to a terminal or a log: escaped, so that it can
neither drive the terminal nor split or forge a line."""

from __future__ import annotations

import re

# What a terminal could take as an instruction rather than text: C0 and C1 controls and
# DEL, the line and paragraph separators, the bidirectional formatting characters (which
# reorder what an operator reads), and surrogates, which no terminal encoding takes.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def printable(text: str) -> str:
    """`text` as it may be printed to a terminal: with what could drive the terminal
    escaped, as `\\n`, `\\x1b` or `\\u202e`."""
    return _UNPRINTABLE.sub(_escaped, text)


def printable_json(line: str) -> str:
    """A line of JSON text as it may be printed to a terminal: the same JSON to a parser,
    with what could drive the terminal escaped as `\\u001b` or `\\u202e`."""
    # Encoders escape only the controls JSON forbids in strings (C0), and outside strings
    # the lines orjson and json.dumps write have none of these characters: escaping them
    # anywhere in the line keeps the JSON.
    return _UNPRINTABLE.sub(_json_escaped, line)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    if short := _SHORT_ESCAPES.get(match[0]):
        return short
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"
