"""Load, check and convert the five data kinds: qa, prompts, preferences, ratings, rankings.

Every file becomes a pyarrow table with one canonical schema per kind. Bad rows never sink a
file: each one goes to a quarantine list with its row number and a reason that names the field,
and the good rows carry on. Only a file with no usable row at all is an error.

Accepted spellings besides our own column names (TRL conventions, mapped automatically):
`prompt`/`completion`, chat `messages` lists, `chosen`/`rejected` as message lists, and
`question` <-> `prompt` as aliases. An explicit `fields` mapping renames columns first.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from rlhf.data.readers import RAW_CHARS, DataError, Record, json_type_name, read_csv, read_jsonl, read_parquet

_STR, _STRS = pa.string(), pa.list_(pa.string())
SCHEMAS: dict[str, pa.Schema] = {
    "qa": pa.schema([pa.field("question", _STR, False), pa.field("answer", _STR, False),
                     pa.field("context", _STR), pa.field("choices", _STRS)]),
    # type: the question's kind where the source names one (open, yes_no, choice...), for the
    # rl stage's prompt mix (rlhf/rl/curriculum.py)
    "prompts": pa.schema([pa.field("question", _STR, False), pa.field("reference", _STR), pa.field("type", _STR)]),
    "preferences": pa.schema([pa.field("prompt", _STR, False), pa.field("chosen", _STR, False),
                              pa.field("rejected", _STR, False)]),
    "ratings": pa.schema([pa.field("prompt", _STR, False), pa.field("response", _STR, False),
                          pa.field("rating", pa.int64(), False)]),
    "rankings": pa.schema([pa.field("prompt", _STR, False), pa.field("responses", _STRS, False)]),
}
# Reward-model pairs; margin is "how much better" in the source's units (rating points, rank
# distance), 0.0 when the source is a plain preference.
PAIRS_SCHEMA = SCHEMAS["preferences"].append(pa.field("margin", pa.float64(), False))
_MISSING = object()


@dataclass
class LoadResult:
    table: pa.Table
    """Valid rows in the canonical schema of `kind`."""
    quarantined: list[dict] = field(default_factory=list)
    """Rejected rows: {"row": 1-based row number, "reason": str, "raw": row or text prefix}."""
    source: str = ""
    """File path or `gym:<task>` the rows came from."""
    kind: str = ""
    """Data kind, a key of SCHEMAS."""
    total_rows: int = 0
    """Rows seen in the source, valid or not."""

    def summary(self) -> dict:
        reasons = Counter(reason_category(q["reason"]) for q in self.quarantined)
        return {"file": self.source, "kind": self.kind, "rows": self.total_rows,
                "valid": self.table.num_rows, "quarantined": len(self.quarantined),
                "reasons": dict(reasons)}


def reason_category(reason: str) -> str:
    """Drop the row-specific tail so reasons can be counted: 'field 'rating': expected ...'."""
    if reason.startswith("duplicate of row"):
        return "duplicate"
    return re.split(r", got | \(", reason, maxsplit=1)[0]


# ----------------------------------------------------------------------------- loading


def load(path: str | Path, kind: str, fields: dict | None = None,
         max_line_bytes: int = 1 << 20) -> LoadResult:
    """Read a JSONL, Parquet or CSV file of `kind`, quarantining bad and duplicate rows."""
    if kind not in SCHEMAS:
        raise DataError(f"unknown data kind '{kind}' (valid: {', '.join(SCHEMAS)})")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = read_jsonl(path, max_line_bytes)
    elif suffix == ".parquet":
        records = read_parquet(path)
    elif suffix == ".csv":
        records = read_csv(path)
    else:
        raise DataError(f"{path}: unknown extension '{path.suffix}' (use .jsonl, .json, .parquet or .csv)")
    decode = _decode_csv_row if suffix == ".csv" else None
    result = _validate(records, kind, fields or {}, str(path), decode)
    if result.total_rows == 0:
        raise DataError(f"{path} is empty")
    if result.table.num_rows == 0:
        first = "; ".join(f"row {q['row']}: {q['reason']}" for q in result.quarantined[:3])
        raise DataError(f"{path}: no valid {kind} rows out of {result.total_rows} ({first})")
    return result


def validate_rows(rows: list[dict], kind: str, source: str = "") -> LoadResult:
    """Check rows in memory as `load` checks a file's: bad and duplicate rows are quarantined
    (never an error, even when none is left)."""
    return _validate(((n, row, "", None) for n, row in enumerate(rows, 1)), kind, {}, source)


_LIST_COLUMNS = {"choices", "responses", "messages"}
_MAYBE_CHAT_COLUMNS = {"chosen", "rejected", "prompt", "completion"}


def _decode_csv_row(row: dict) -> dict:
    """CSV cells are text: JSON arrays in list columns, numbers in `rating` (after renaming)."""
    out = dict(row)
    for key, value in row.items():
        text = value.strip() if isinstance(value, str) else value
        if key in _LIST_COLUMNS and text == "":
            out[key] = None
        elif key in _LIST_COLUMNS | _MAYBE_CHAT_COLUMNS and text and text[0] == "[":
            try:
                parsed = json.loads(text)
            except ValueError:
                continue  # left as text; the field check will say what was expected
            if key in _LIST_COLUMNS or _is_chat(parsed):
                out[key] = parsed
        elif key == "rating" and re.fullmatch(r"[+-]?\d+(\.\d*)?", text or ""):
            out[key] = float(text) if "." in text else int(text)
    return out


# ----------------------------------------------------------------------------- validation


class _RowError(Exception):
    pass


def _validate(records: Iterator[Record], kind: str, fields: dict, source: str,
              decode: Callable[[dict], dict] | None = None) -> LoadResult:
    good, bad, seen, total = [], [], {}, 0
    for number, record, error, raw in records:
        total += 1
        if record is None:
            bad.append({"row": number, "reason": error, "raw": raw})
            continue
        try:
            renamed = _rename(record, fields)
            row = _ROW_PARSERS[kind](decode(renamed) if decode else renamed)
        except _RowError as exc:
            bad.append({"row": number, "reason": str(exc), "raw": _raw_row(record)})
            continue
        key = _canonical(row)
        if key in seen:
            bad.append({"row": number, "reason": f"duplicate of row {seen[key]}", "raw": _raw_row(record)})
            continue
        seen[key] = number
        good.append(row)
    table = pa.Table.from_pylist(good, schema=SCHEMAS[kind])
    return LoadResult(table=table, quarantined=bad, source=source, kind=kind, total_rows=total)


def _rename(record: dict, fields: dict) -> dict:
    """Mapped columns win over same-named unmapped ones: the user asked for them explicitly."""
    out = {k: v for k, v in record.items() if k not in fields}
    out.update({fields[k]: v for k, v in record.items() if k in fields})
    return out


_type = json_type_name


def _text(value: Any, name: str, optional: bool = False) -> str | None:
    if optional and (value is _MISSING or value is None or (isinstance(value, str) and not value.strip())):
        return None  # empty counts as absent: CSV cannot tell an empty cell from a missing value
    if value is _MISSING or value is None:
        raise _RowError(f"missing field '{name}'")
    if not isinstance(value, str):
        raise _RowError(f"field '{name}': expected a string, got {_type(value)}")
    if not value.strip():
        raise _RowError(f"field '{name}': empty string")
    return value


def _texts(value: Any, name: str) -> list[str]:
    if value is _MISSING or value is None:
        raise _RowError(f"missing field '{name}'")
    if not isinstance(value, list):
        raise _RowError(f"field '{name}': expected a list of strings, got {_type(value)}")
    return [_text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _is_chat(value: Any) -> bool:
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m for m in value))


def _content(message: dict) -> Any:
    content = message.get("content")
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


def _last_index(messages: list, role: str) -> int:
    return max((i for i, m in enumerate(messages) if m.get("role") == role), default=-1)


def _chat_turn(messages: Any, name: str) -> tuple[Any, Any]:
    """(last user message, final assistant reply to it or _MISSING) of a chat list."""
    if not _is_chat(messages):
        raise _RowError(f"field '{name}': expected a list of {{role, content}} messages, "
                        f"got {_type(messages)}")
    user = _last_index(messages, "user")
    if user < 0:
        raise _RowError(f"field '{name}': no user message")
    reply = _last_index(messages, "assistant")
    return _content(messages[user]), _content(messages[reply]) if reply > user else _MISSING


def _pick(record: dict, names: tuple[str, ...], role: str) -> Any:
    """First present column of `names`; a chat list in it yields its last `role` message."""
    for name in names:
        value = record.get(name)
        if value is None:
            continue
        if _is_chat(value):
            index = _last_index(value, role)
            if index < 0:
                raise _RowError(f"field '{name}': no {role} message")
            return _content(value[index])
        return value
    return _MISSING


def _question_answer(record: dict, q_names: tuple, a_names: tuple) -> tuple[Any, Any]:
    question, answer = _pick(record, q_names, "user"), _pick(record, a_names, "assistant")
    if "messages" in record and (question is _MISSING or answer is _MISSING):
        chat_q, chat_a = _chat_turn(record["messages"], "messages")
        question = chat_q if question is _MISSING else question
        answer = chat_a if answer is _MISSING else answer
    return question, answer


def _qa_row(record: dict) -> dict:
    question, answer = _question_answer(record, ("question", "prompt"), ("answer", "completion"))
    row = {"question": _text(question, "question"), "answer": _text(answer, "answer"),
           "context": _text(record.get("context"), "context", optional=True), "choices": None}
    choices = record.get("choices")
    if choices is not None and choices != []:
        row["choices"] = _texts(choices, "choices")
        if row["answer"].strip() not in {c.strip() for c in row["choices"]}:
            raise _RowError(f"field 'answer': expected one of the choices, got {row['answer'][:80]!r}")
    return row


def _prompts_row(record: dict) -> dict:
    question, reference = _question_answer(
        record, ("question", "prompt"), ("reference", "answer", "completion"))
    return {"question": _text(question, "question"),
            "reference": _text(reference, "reference", optional=True),
            "type": _text(record.get("type"), "type", optional=True)}


def _preferences_row(record: dict) -> dict:
    chosen, rejected = record.get("chosen", _MISSING), record.get("rejected", _MISSING)
    prompt = _pick(record, ("prompt", "question"), "user")
    if prompt is _MISSING and _is_chat(chosen) and _is_chat(rejected):
        # Implicit prompt (TRL): the user turns both conversations share.
        shared = list(itertools.takewhile(lambda p: p[0] == p[1], zip(chosen, rejected)))
        index = _last_index([c for c, _ in shared], "user")
        prompt = _content(shared[index][0]) if index >= 0 else _MISSING
    row = {"prompt": _text(prompt, "prompt"),
           "chosen": _text(_pick(record, ("chosen",), "assistant"), "chosen"),
           "rejected": _text(_pick(record, ("rejected",), "assistant"), "rejected")}
    if row["chosen"].strip() == row["rejected"].strip():
        raise _RowError("chosen and rejected are identical")
    return row


def _ratings_row(record: dict) -> dict:
    prompt, response = _question_answer(
        record, ("prompt", "question"), ("response", "answer", "completion"))
    rating = record.get("rating", _MISSING)
    if rating is _MISSING or rating is None:
        raise _RowError("missing field 'rating'")
    number = isinstance(rating, (int, float)) and not isinstance(rating, bool)
    if not (number and (isinstance(rating, int) or rating.is_integer()) and 1 <= rating <= 5):
        shown = repr(rating) if number else _type(rating)
        raise _RowError(f"field 'rating': expected an integer 1-5, got {shown}")
    return {"prompt": _text(prompt, "prompt"), "response": _text(response, "response"),
            "rating": int(rating)}


def _rankings_row(record: dict) -> dict:
    prompt = _pick(record, ("prompt", "question"), "user")
    row = {"prompt": _text(prompt, "prompt"),
           "responses": _texts(record.get("responses", _MISSING), "responses")}
    distinct = len({r.strip() for r in row["responses"]})
    if distinct < 2:
        raise _RowError(f"field 'responses': expected at least 2 distinct responses, got {distinct}")
    return row


_ROW_PARSERS = {"qa": _qa_row, "prompts": _prompts_row, "preferences": _preferences_row,
                "ratings": _ratings_row, "rankings": _rankings_row}


def _canonical(row: dict) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def _raw_row(record: Any) -> Any:
    """The row itself when short (as plain JSON), else a prefix of its JSON text."""
    text = json.dumps(record, ensure_ascii=False, default=str)
    return json.loads(text) if len(text) <= RAW_CHARS else text[:RAW_CHARS]
