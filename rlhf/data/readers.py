"""Row-by-row readers for JSONL, Parquet and CSV that never let one bad row sink a file.

Each reader yields `Record`s: (1-based row number, the row as a dict or None, the reason it
could not be read, a prefix of its raw text). Validation of the rows happens in rlhf.data.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

RAW_CHARS = 500  # how much of a bad row's raw text the quarantine file keeps


class DataError(ValueError):
    """A data file that cannot be used at all; the message names the file."""


def json_type_name(value: Any) -> str:
    names = {type(None): "null", dict: "object", str: "str"}
    return names.get(type(value), type(value).__name__)


# A reader yields (row number, record dict or None, reason if unreadable, raw text prefix).
Record = tuple[int, "dict | None", str, str]


def read_jsonl(path: Path, max_line_bytes: int) -> Iterator[Record]:
    """Line by line in binary so one bad line (bytes, JSON, size) costs only itself."""
    with open(path, "rb") as f:
        for lineno in itertools.count(1):
            # At most limit + 2 bytes (room for "\r\n") tells "too long" apart without ever
            # holding the whole line.
            line = f.readline(max_line_bytes + 2)
            if not line:
                return
            if len(line.rstrip(b"\r\n")) > max_line_bytes:
                size = len(line.rstrip(b"\r\n")) + (0 if line.endswith(b"\n") else _skip_line(f))
                prefix = line[:RAW_CHARS].decode("utf-8", "replace")
                yield lineno, None, f"line too long ({size} bytes, limit {max_line_bytes})", prefix
                continue
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue  # blank lines are layout, not rows
            yield (lineno, *_parse_line(line))


def _skip_line(f) -> int:
    """Read past the rest of a line in small chunks; return its content bytes (no newline)."""
    skipped = 0
    while chunk := f.readline(1 << 16):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk.rstrip(b"\r\n"))
        skipped += len(chunk)
    return skipped


def _parse_line(line: bytes) -> tuple[dict | None, str, str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 (byte {exc.start})", line[:RAW_CHARS].decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "too deep"
        return None, f"invalid JSON ({detail})", text[:RAW_CHARS]
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {json_type_name(obj)}", text[:RAW_CHARS]
    return obj, "", ""


def read_parquet(path: Path) -> Iterator[Record]:
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read Parquet ({exc})") from None
    for i, row in enumerate(rows, 1):
        yield i, row, "", ""


def read_csv(path: Path) -> Iterator[Record]:
    """Every cell is read as text (no type guessing: '007' stays '007'). The stdlib parser,
    not pyarrow's, because it numbers records exactly even with newlines inside quoted cells,
    and a ragged row or bad bytes cost only that row instead of the whole file."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header, number = next(reader, None), 0
        while header:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a cell over the csv module's size limit
                cells = exc
            if cells != []:  # blank lines are layout, not rows
                number += 1
                yield ((number, None, f"unreadable CSV row ({cells})", "") if isinstance(cells, csv.Error)
                       else (number, *_csv_record(header, cells)))


def _csv_record(header: list[str], cells: list[str]) -> tuple[dict | None, str, str]:
    raw = ",".join(cells).encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:RAW_CHARS]
    if len(cells) != len(header):
        return None, f"wrong number of columns (expected {len(header)}, got {len(cells)})", raw
    try:
        for cell in cells:
            cell.encode("utf-8")  # surrogates mark bytes that were not UTF-8
    except UnicodeEncodeError:
        return None, "invalid UTF-8", raw
    return dict(zip(header, cells)), "", ""


