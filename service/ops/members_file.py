"""A file of customer ids for `members import`: one a line, or a CSV column; each line
checked by the command's own rule, so a bad one is reported by its number, never sent."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from service.domain.commands import customer_id_problem
from service.escaping import printable
from service.ops.common import (
    OpsError,
)

BAD_LINES_SHOWN = 20


_BAD_TEXT_MAX = 80


def line_problem(text: str) -> str | None:
    """Why a line cannot be a customer id, or None when it can."""
    if any("\udc80" <= c <= "\udcff" for c in text):
        return "not UTF-8"
    return customer_id_problem(text)


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    problem: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "problem": self.problem, "text": self.text}


def _shown(text: str) -> str:
    """A bad line as it may be shown: escaped for a terminal (and for JSON, which cannot
    carry the lone surrogates that stand for bytes that are not UTF-8), and shortened."""
    escaped = printable(text)
    return escaped if len(escaped) <= _BAD_TEXT_MAX else escaped[:_BAD_TEXT_MAX] + "…"


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    customer_id: str | None
    bad: BadLine | None = None


_BOM = b"\xef\xbb\xbf"


def read_lines(data: bytes, column: str | None = None) -> Iterator[Line]:
    """The ids in `data`: one a line, or the named column of a CSV file with a header.
    Empty lines are skipped."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if column is None:
        yield from _plain_lines(data)
    else:
        yield from _csv_lines(data, column)


def _plain_lines(data: bytes) -> Iterator[Line]:
    for number, raw in enumerate(io.BytesIO(data), start=1):
        text = raw.rstrip(b"\n").removesuffix(b"\r").decode(errors="surrogateescape")
        if text:
            yield _judged(number, text)


def _csv_lines(data: bytes, column: str) -> Iterator[Line]:
    text = io.TextIOWrapper(io.BytesIO(data), errors="surrogateescape", newline="")
    rows = csv.reader(text)
    header = next(rows, None)
    if header is None or column not in header:
        found = ", ".join(repr(printable(name)) for name in header or [])
        raise OpsError(f"the file's header has no column {column!r} (it has: {found or 'none'})")
    index = header.index(column)
    try:
        for row in rows:
            if not row:
                continue
            if index >= len(row):
                yield Line(rows.line_num, None, BadLine(rows.line_num, f"no {column} column", ""))
                continue
            yield _judged(rows.line_num, row[index])
    except csv.Error as error:
        raise OpsError(f"line {rows.line_num} is not CSV: {error}") from None


def _judged(number: int, text: str) -> Line:
    problem = line_problem(text)
    if problem is None:
        return Line(number, text)
    return Line(number, None, BadLine(number, problem, _shown(text)))


@dataclass(slots=True)
class FileScan:
    """What a file holds, read before anything is sent."""

    digest: str
    ids: int = 0
    bad_lines: int = 0
    bad_sample: list[BadLine] = field(default_factory=list)


def scan(data: bytes, column: str | None) -> FileScan:
    found = FileScan(hashlib.sha256(data).hexdigest())
    for line in read_lines(data, column):
        if line.bad is None:
            found.ids += 1
            continue
        found.bad_lines += 1
        if len(found.bad_sample) < BAD_LINES_SHOWN:
            found.bad_sample.append(line.bad)
    return found


def id_chunks(data: bytes, column: str | None, size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in read_lines(data, column):
        if line.customer_id is None:
            continue
        chunk.append(line.customer_id)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
