"""Whole tables of the data kinds: saving (atomic, with a quarantine file for bad rows), turning
ratings and rankings into preference pairs, the validation split, and `load_source`, which reads
a file or generates `gym:` questions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf.data.gym import gym_entries
from rlhf.data.kinds import PAIRS_SCHEMA, SCHEMAS, LoadResult, _canonical, load
from rlhf.data.readers import DataError
from rlhf.data.synthetic import synthetic_rows

# ----------------------------------------------------------------------------- writing


def quarantine_path_for(output_path: str | Path) -> Path:
    output_path = Path(output_path)
    return output_path.with_name(f"{output_path.stem}.quarantine.jsonl")


def write_quarantine(result: LoadResult, path: str | Path) -> Path | None:
    """JSONL of quarantined rows; with none, remove a stale file and return None."""
    path = Path(path)
    if not result.quarantined:
        path.unlink(missing_ok=True)
        return None
    lines = "".join(json.dumps(q, ensure_ascii=False, default=str) + "\n" for q in result.quarantined)
    return _write_atomic(path, lines.encode("utf-8"))


def save(table: pa.Table, path: str | Path) -> Path:
    """Write `.parquet` or `.jsonl` (one JSON object per row)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return _write_atomic(path, sink.getvalue().to_pybytes())
    if suffix == ".jsonl":
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist())
        return _write_atomic(path, lines.encode("utf-8"))
    raise DataError(f"{path}: cannot save as '{path.suffix}' (use .parquet or .jsonl)")


def _write_atomic(path: Path, data: bytes) -> Path:
    # A reader (or a crashed run) never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def validate_file(path: str | Path, kind: str, fields: dict | None = None,
                  out: str | Path | None = None) -> LoadResult:
    """Load and check a file; write the clean table to `out` and the quarantine beside it
    (or beside the input as `<stem>.<kind>.quarantine.jsonl` when there is no `out`)."""
    result = load(path, kind, fields)
    if out is not None:
        save(result.table, out)
        write_quarantine(result, quarantine_path_for(out))
    else:
        path = Path(path)
        write_quarantine(result, path.with_name(f"{path.stem}.{kind}.quarantine.jsonl"))
    return result


# ----------------------------------------------------------------------------- pairs


def ratings_to_pairs(table: pa.Table) -> pa.Table:
    """Per prompt, every two responses with different ratings: the higher one is chosen.
    Rows keep their file order within a prompt; margin is the rating difference."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for row in table.select(["prompt", "response", "rating"]).to_pylist():
        groups.setdefault(row["prompt"], []).append((row["response"], row["rating"]))
    pairs = []
    for prompt, rated in groups.items():
        for (a, ra), (b, rb) in itertools.combinations(rated, 2):
            if ra == rb or a.strip() == b.strip():
                continue  # a tie or the same text teaches the reward model nothing
            (hi, rh), (lo, rl) = ((a, ra), (b, rb)) if ra > rb else ((b, rb), (a, ra))
            pairs.append({"prompt": prompt, "chosen": hi, "rejected": lo, "margin": float(rh - rl)})
    return pa.Table.from_pylist(pairs, schema=PAIRS_SCHEMA)


def rankings_to_pairs(table: pa.Table) -> pa.Table:
    """All ordered pairs i < j of each ranking (best first): responses[i] beats responses[j].
    A response listed twice keeps its best rank; margin is the rank distance."""
    pairs = []
    for row in table.select(["prompt", "responses"]).to_pylist():
        ranked = list(dict.fromkeys(r.strip() for r in row["responses"]))
        first = {}
        for text in row["responses"]:
            first.setdefault(text.strip(), text)
        for i, j in itertools.combinations(range(len(ranked)), 2):
            pairs.append({"prompt": row["prompt"], "chosen": first[ranked[i]],
                          "rejected": first[ranked[j]], "margin": float(j - i)})
    return pa.Table.from_pylist(pairs, schema=PAIRS_SCHEMA)


def to_pairs(result_or_table: LoadResult | pa.Table, kind: str | None = None) -> pa.Table:
    """Preference pairs (PAIRS_SCHEMA) from preferences, ratings or rankings."""
    table = result_or_table.table if isinstance(result_or_table, LoadResult) else result_or_table
    kind = kind or getattr(result_or_table, "kind", None)
    if kind == "ratings":
        return ratings_to_pairs(table)
    if kind == "rankings":
        return rankings_to_pairs(table)
    if kind == "preferences":
        if "margin" not in table.column_names:
            table = table.append_column("margin", pa.array([0.0] * table.num_rows, pa.float64()))
        return table.select(PAIRS_SCHEMA.names).cast(PAIRS_SCHEMA)
    raise DataError(f"cannot make preference pairs from kind '{kind}' (use preferences, ratings or rankings)")


# ----------------------------------------------------------------------------- splitting


def split(table: pa.Table, val_fraction: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """(train, val) chosen by a stable hash, so the same rows split the same way in any order.

    The hash key is the row's question/prompt when it has one, else the whole row: every row
    about one question lands on the same side, so validation never sees a trained-on question
    and a prompt's ratings stay together for ratings_to_pairs.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    key = next((c for c in ("question", "prompt") if c in table.column_names), None)
    rows = table.column(key).to_pylist() if key else table.to_pylist()
    train, val = [], []
    for i, row in enumerate(rows):
        digest = hashlib.sha256(f"{seed}\0{_canonical(row)}".encode()).digest()
        (val if int.from_bytes(digest[:8], "big") < val_fraction * 2**64 else train).append(i)
    return table.take(pa.array(train, pa.int64())), table.take(pa.array(val, pa.int64()))


def gym_rows(task: str, size: int, seed: int) -> pa.Table:
    """`size` generated questions of a reasoning-gym task as a prompts table."""
    return pa.Table.from_pylist(gym_entries(task, size, seed), schema=SCHEMAS["prompts"])


GENERATED = ("gym:", "synth:")  # prefixes of generated sources; anything else is a file


def is_generated(spec: str) -> bool:
    return spec.startswith(GENERATED)


def generated_rows(spec: str, size: int, seed: int) -> pa.Table:
    """`gym:<task>` (reasoning-gym) or `synth:<domain>` (rlhf/data/synthetic.py) as a prompts table."""
    if spec.startswith("synth:"):
        rows = [{"question": r["question"], "reference": r["reference"], "type": r.get("type")}
                for r in synthetic_rows(spec[len("synth:"):], size, seed)]
        return pa.Table.from_pylist(rows, schema=SCHEMAS["prompts"])
    return gym_rows(spec[len("gym:"):], size, seed)


def load_source(spec: str, kind: str, fields: dict | None = None, size: int = 512,
                seed: int = 0) -> LoadResult:
    """`gym:<task>` and `synth:<domain>` generate questions (kind prompts or qa); anything
    else is a file path."""
    if not is_generated(spec):
        return load(spec, kind, fields)
    if kind not in ("prompts", "qa"):
        raise DataError(f"{spec}: generated questions are kind prompts or qa, not '{kind}'")
    table = generated_rows(spec, size, seed)
    if kind == "qa":
        table = pa.Table.from_pylist(
            [{"question": r["question"], "answer": r["reference"]} for r in table.to_pylist()],
            schema=SCHEMAS["qa"])
    return LoadResult(table=table, source=spec, kind=kind, total_rows=table.num_rows)
