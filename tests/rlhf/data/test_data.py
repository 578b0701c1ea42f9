"""Loading, checking, converting and splitting the five data kinds (every input built here)."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.data.gym import gym_score
from rlhf.data.kinds import PAIRS_SCHEMA, SCHEMAS, LoadResult, load
from rlhf.data.readers import DataError
from rlhf.data.tables import (
    gym_rows,
    load_source,
    quarantine_path_for,
    rankings_to_pairs,
    ratings_to_pairs,
    save,
    split,
    to_pairs,
    validate_file,
    write_quarantine,
)

pytestmark = pytest.mark.no_ray  # runs beside the `alone` tests in make test

# ----------------------------------------------------------------------------- helpers


def write_jsonl(path, rows):
    """Rows are dicts (dumped as JSON) or bytes (written as the line itself)."""
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else json.dumps(row).encode())
            f.write(b"\n")
    return path


def write_parquet(path, rows):
    names = list(dict.fromkeys(k for row in rows for k in row))  # from_pylist reads only row 1's keys
    pq.write_table(pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names}), path)
    return path


def write_csv(path, rows):
    names = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    return path


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet, "csv": write_csv}

GOOD = {
    "qa": [
        {"question": "What is 2+2?", "answer": "4", "context": "arithmetic", "choices": ["3", "4"]},
        {"question": "Capital of France?", "answer": "Paris"},
    ],
    "prompts": [{"question": "What is 2+2?", "reference": "4", "type": "open"}, {"question": "Name a colour."}],
    "preferences": [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ],
    "ratings": [
        {"prompt": "Capital of France?", "response": "Paris.", "rating": 5},
        {"prompt": "Capital of France?", "response": "Lyon.", "rating": 1},
    ],
    "rankings": [{"prompt": "2+2?", "responses": ["4", "four-ish", "5"]}],
}
NULLABLE = {"qa": ("context", "choices"), "prompts": ("reference", "type")}


def expected_rows(kind):
    return [{**{k: None for k in NULLABLE.get(kind, ())}, **row} for row in GOOD[kind]]


def quarantine_of(tmp_path, path, kind, **kw):
    """Run validate_file and read back the quarantine file it wrote next to `out`."""
    out = tmp_path / "clean.parquet"
    result = validate_file(path, kind, out=out, **kw)
    qfile = tmp_path / "clean.quarantine.jsonl"
    lines = [json.loads(line) for line in qfile.read_text().splitlines()] if qfile.exists() else []
    return result, {q["row"]: q["reason"] for q in lines}, lines


# ----------------------------------------------------------------------------- every kind, every format


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("kind", sorted(GOOD))
def test_each_kind_loads_from_each_format(tmp_path, kind, fmt):
    path = WRITERS[fmt](tmp_path / f"in.{fmt}", GOOD[kind])
    result = load(path, kind)
    assert result.table.schema == SCHEMAS[kind]
    assert result.table.to_pylist() == expected_rows(kind)
    assert result.quarantined == [] and result.total_rows == len(GOOD[kind])
    assert result.summary() == {"file": str(path), "kind": kind, "rows": len(GOOD[kind]),
                                "valid": len(GOOD[kind]), "quarantined": 0, "reasons": {}}


def test_csv_cells_stay_text_and_ratings_parse(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('prompt,response,rating\n007,"multi\nline",4\n007,x,4.0\n007,y,3.5\n')
    result = load(path, "ratings")
    assert result.table.to_pylist() == [{"prompt": "007", "response": "multi\nline", "rating": 4},
                                        {"prompt": "007", "response": "x", "rating": 4}]
    assert result.quarantined[0]["row"] == 3
    assert result.quarantined[0]["reason"] == "field 'rating': expected an integer 1-5, got 3.5"


def test_csv_ragged_row_is_quarantined_with_its_number(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('question,answer\n"two\nlines",a\nq2,a2,extra\nq3,a3\n')
    result = load(path, "qa")
    assert [r["question"] for r in result.table.to_pylist()] == ["two\nlines", "q3"]
    assert [(q["row"], q["reason"]) for q in result.quarantined] == [
        (2, "wrong number of columns (expected 2, got 3)")]


# ----------------------------------------------------------------------------- TRL conventions


def test_prompt_completion_maps_to_qa_and_prompts(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Why is the sky blue?", "completion": "Rayleigh."}])
    assert load(path, "qa").table.to_pylist() == [
        {"question": "Why is the sky blue?", "answer": "Rayleigh.", "context": None, "choices": None}]
    assert load(path, "prompts").table.to_pylist() == [
        {"question": "Why is the sky blue?", "reference": "Rayleigh.", "type": None}]


def test_gsm8k_style_question_answer_is_a_prompt_with_reference(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "2"}])
    assert load(path, "prompts").table.to_pylist() == [{"question": "1+1?", "reference": "2", "type": None}]


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Capital of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_chat_messages_give_last_user_turn_and_final_reply(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"m.{fmt}", [{"messages": CHAT}, {"messages": CHAT[:4]}])
    qa = load(path, "qa")
    assert qa.table.to_pylist() == [
        {"question": "Capital of Italy?", "answer": "Rome.", "context": None, "choices": None}]
    assert qa.quarantined[0]["row"] == 2 and qa.quarantined[0]["reason"] == "missing field 'answer'"
    prompts = load(path, "prompts").table.to_pylist()
    assert prompts == [{"question": "Capital of Italy?", "reference": "Rome.", "type": None},
                       {"question": "Capital of Italy?", "reference": None, "type": None}]


def test_conversational_prompt_completion(tmp_path):
    row = {"prompt": [{"role": "user", "content": "2+3?"}],
           "completion": [{"role": "assistant", "content": "5"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    assert load(path, "qa").table.to_pylist()[0] | {} == {
        "question": "2+3?", "answer": "5", "context": None, "choices": None}


def test_preference_message_lists_with_implicit_prompt(tmp_path):
    user = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Best pet?"}]
    rows = [
        {"chosen": user + [{"role": "assistant", "content": "A cat."}],
         "rejected": user + [{"role": "assistant", "content": "A rock."}]},
        {"prompt": [{"role": "user", "content": "Sky colour?"}],
         "chosen": [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "assistant", "content": "Green."}]},
        {"question": "2+2?", "chosen": "4", "rejected": "22"},
    ]
    expected = [{"prompt": "Best pet?", "chosen": "A cat.", "rejected": "A rock."},
                {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."},
                {"prompt": "2+2?", "chosen": "4", "rejected": "22"}]
    assert load(write_jsonl(tmp_path / "p.jsonl", rows), "preferences").table.to_pylist() == expected
    # Parquet cannot mix a list and a string in one column, so the chat rows go alone.
    parquet = load(write_parquet(tmp_path / "p.parquet", rows[:2]), "preferences")
    assert parquet.table.to_pylist() == expected[:2]


def test_question_answer_aliases_for_ratings(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"question": "q", "answer": "a", "rating": 3}])
    assert load(path, "ratings").table.to_pylist() == [{"prompt": "q", "response": "a", "rating": 3}]


def test_field_mapping_renames_before_anything_else(tmp_path):
    rows = [{"query": "What is H2O?", "gold": "Water", "question": "ignored", "opts": ["Water", "Ice"]}]
    fields = {"query": "question", "gold": "answer", "opts": "choices"}
    for fmt in ("csv", "jsonl"):
        result = load(WRITERS[fmt](tmp_path / f"f.{fmt}", rows), "qa", fields=fields)
        assert result.table.to_pylist() == [
            {"question": "What is H2O?", "answer": "Water", "context": None, "choices": ["Water", "Ice"]}]


# ----------------------------------------------------------------------------- bad rows


def test_bad_qa_rows_are_quarantined_and_good_rows_survive(tmp_path):
    rows = [
        {"question": "good 1", "answer": "a"},
        {"question": "no answer"},
        {"question": 5, "answer": "a"},
        {"question": "   ", "answer": "a"},
        {"question": "pick", "answer": "E", "choices": ["A", "B"]},
        {"question": "good 1", "answer": "a"},
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2]",
        b"",
        {"question": "good 2", "answer": "b"},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result, reasons, lines = quarantine_of(tmp_path, path, "qa")
    assert [r["question"] for r in result.table.to_pylist()] == ["good 1", "good 2"]
    assert reasons == {
        2: "missing field 'answer'",
        3: "field 'question': expected a string, got int",
        4: "field 'question': empty string",
        5: "field 'answer': expected one of the choices, got 'E'",
        6: "duplicate of row 1",
        7: "invalid UTF-8 (byte 0)",
        8: "invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        9: "expected a JSON object, got list",
    }
    assert lines[0]["raw"] == {"question": "no answer"}
    assert result.total_rows == 10  # the blank line is not a row
    assert pq.read_table(tmp_path / "clean.parquet").num_rows == 2
    assert result.summary()["reasons"]["duplicate"] == 1


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_bad_ratings(tmp_path, fmt):
    rows = [{"prompt": "p", "response": f"r{i}", "rating": v} for i, v in enumerate([3, 0, 6, 2])]
    result, reasons, _ = quarantine_of(tmp_path, WRITERS[fmt](tmp_path / f"r.{fmt}", rows), "ratings")
    assert [r["rating"] for r in result.table.to_pylist()] == [3, 2]
    assert reasons == {2: "field 'rating': expected an integer 1-5, got 0",
                       3: "field 'rating': expected an integer 1-5, got 6"}


def test_ratings_reject_bools_and_fractions(tmp_path):
    rows = [{"prompt": "p", "response": "a", "rating": True}, {"prompt": "p", "response": "b", "rating": 2.5},
            {"prompt": "p", "response": "c", "rating": "4"}, {"prompt": "p", "response": "d", "rating": 4.0}]
    result = load(write_jsonl(tmp_path / "r.jsonl", rows), "ratings")
    assert result.table.to_pylist() == [{"prompt": "p", "response": "d", "rating": 4}]
    assert [q["reason"] for q in result.quarantined] == [
        "field 'rating': expected an integer 1-5, got bool",
        "field 'rating': expected an integer 1-5, got 2.5",
        "field 'rating': expected an integer 1-5, got str"]


def test_bad_rankings_and_preferences(tmp_path):
    rankings = [{"prompt": "p", "responses": ["only one"]}, {"prompt": "p", "responses": ["a", "a "]},
                {"prompt": "p", "responses": ["a", "b"]}]
    result, reasons, _ = quarantine_of(tmp_path, write_jsonl(tmp_path / "k.jsonl", rankings), "rankings")
    assert result.table.num_rows == 1
    assert reasons == {1: "field 'responses': expected at least 2 distinct responses, got 1",
                       2: "field 'responses': expected at least 2 distinct responses, got 1"}
    prefs = [{"prompt": "p", "chosen": "same", "rejected": "same"},
             {"prompt": "p", "chosen": "x", "rejected": "y"}]
    result, reasons, _ = quarantine_of(tmp_path, write_parquet(tmp_path / "p.parquet", prefs), "preferences")
    assert result.table.num_rows == 1 and reasons == {1: "chosen and rejected are identical"}


def test_ten_megabyte_line_is_quarantined_without_parsing_it(tmp_path, monkeypatch):
    big = json.dumps({"question": "x" * (10 << 20), "answer": "a"}).encode()
    rows = [{"question": "q1", "answer": "a"}, big, {"question": "q3", "answer": "a"}]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    seen = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: seen.append(len(s)) or real_loads(s, *a, **k))
    result, reasons, lines = quarantine_of(tmp_path, path, "qa")
    assert [r["question"] for r in result.table.to_pylist()] == ["q1", "q3"]
    assert reasons == {2: f"line too long ({len(big)} bytes, limit {1 << 20})"}  # newline excluded
    assert len(lines[0]["raw"]) <= 500
    assert max(seen) < 1 << 20


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_jsonl_file(tmp_path, content):
    path = tmp_path / "e.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="is empty"):
        load(path, "qa")


def test_empty_csv_and_parquet(tmp_path):
    (tmp_path / "h.csv").write_text("question,answer\n")
    pq.write_table(SCHEMAS["qa"].empty_table(), tmp_path / "e.parquet")
    for name in ("h.csv", "e.parquet"):
        with pytest.raises(DataError, match="is empty"):
            load(tmp_path / name, "qa")


def test_missing_file_unknown_kind_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope.jsonl", "qa")
    path = write_jsonl(tmp_path / "ok.jsonl", GOOD["qa"])
    with pytest.raises(DataError, match="valid: qa, prompts, preferences, ratings, rankings"):
        load(path, "essays")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown extension"):
        load(tmp_path / "x.txt", "qa")


def test_zero_valid_rows_is_an_error_naming_file_and_reasons(tmp_path):
    path = write_jsonl(tmp_path / "z.jsonl", [{"question": "q"}, {"answer": "a"}])
    with pytest.raises(DataError) as info:
        load(path, "qa")
    assert str(path) in str(info.value) and "missing field 'answer'" in str(info.value)
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- writing


def test_save_roundtrip_and_quarantine_paths(tmp_path):
    result = load(write_jsonl(tmp_path / "in.jsonl", GOOD["qa"] + [{"question": "x"}]), "qa")
    for name in ("out.parquet", "sub/out.jsonl"):
        saved = save(result.table, tmp_path / name)
        assert load(saved, "qa").table.to_pylist() == expected_rows("qa")
    with pytest.raises(DataError):
        save(result.table, tmp_path / "out.txt")
    assert quarantine_path_for(tmp_path / "d" / "t.parquet") == tmp_path / "d" / "t.quarantine.jsonl"
    validate_file(tmp_path / "in.jsonl", "qa")
    assert (tmp_path / "in.qa.quarantine.jsonl").exists()
    clean = LoadResult(table=result.table, kind="qa")
    assert write_quarantine(clean, tmp_path / "in.qa.quarantine.jsonl") is None
    assert not (tmp_path / "in.qa.quarantine.jsonl").exists()  # a stale report is removed


# ----------------------------------------------------------------------------- pairs


def as_tuples(pairs):
    assert pairs.schema == PAIRS_SCHEMA
    return [(r["prompt"], r["chosen"], r["rejected"], r["margin"]) for r in pairs.to_pylist()]


def test_ratings_to_pairs_hand_checked():
    rows = [("p1", "a", 5), ("p1", "b", 3), ("p2", "x", 2), ("p1", "c", 5), ("p1", "d", 1), ("p2", "y", 2)]
    table = pa.Table.from_pylist([{"prompt": p, "response": r, "rating": v} for p, r, v in rows],
                                 schema=SCHEMAS["ratings"])
    pairs = as_tuples(ratings_to_pairs(table))
    assert pairs == [("p1", "a", "b", 2.0), ("p1", "a", "d", 4.0), ("p1", "c", "b", 2.0),
                     ("p1", "b", "d", 2.0), ("p1", "c", "d", 4.0)]


def test_rankings_to_pairs_hand_checked():
    rows = [{"prompt": "p", "responses": ["best", "mid", "worst"]},
            {"prompt": "q", "responses": ["a", "b", "a"]}]
    pairs = as_tuples(rankings_to_pairs(pa.Table.from_pylist(rows, schema=SCHEMAS["rankings"])))
    assert pairs == [("p", "best", "mid", 1.0), ("p", "best", "worst", 2.0), ("p", "mid", "worst", 1.0),
                     ("q", "a", "b", 1.0)]


def test_to_pairs_dispatch(tmp_path):
    prefs = load(write_jsonl(tmp_path / "p.jsonl", GOOD["preferences"]), "preferences")
    table = to_pairs(prefs)
    assert table.schema == PAIRS_SCHEMA and table.column("margin").to_pylist() == [0.0, 0.0]
    ratings = load(write_jsonl(tmp_path / "r.jsonl", GOOD["ratings"]), "ratings")
    assert to_pairs(ratings.table, "ratings").to_pylist() == [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "margin": 4.0}]
    with pytest.raises(DataError):
        to_pairs(prefs.table, "qa")


# ----------------------------------------------------------------------------- split


def test_split_is_deterministic_order_free_and_roughly_right():
    rows = [{"question": f"question {i}", "reference": str(i)} for i in range(1000)]
    table = pa.Table.from_pylist(rows, schema=SCHEMAS["prompts"])
    train, val = split(table, 0.2, seed=3)
    assert 150 <= val.num_rows <= 250 and train.num_rows + val.num_rows == 1000
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    train2, val2 = split(pa.Table.from_pylist(shuffled, schema=SCHEMAS["prompts"]), 0.2, seed=3)
    ids = lambda t: set(t.column("question").to_pylist())  # noqa: E731
    assert ids(val) == ids(val2) and ids(train) == ids(train2) and not ids(train) & ids(val)
    assert ids(split(table, 0.2, seed=4)[1]) != ids(val)
    assert split(table, 0.0)[1].num_rows == 0
    with pytest.raises(DataError):
        split(table, 1.0)


def test_split_keeps_one_prompts_rows_together():
    rows = [{"prompt": f"p{i // 3}", "response": f"r{i}", "rating": 1 + i % 5} for i in range(300)]
    train, val = split(pa.Table.from_pylist(rows, schema=SCHEMAS["ratings"]), 0.3)
    assert not set(train.column("prompt").to_pylist()) & set(val.column("prompt").to_pylist())


# ----------------------------------------------------------------------------- reasoning-gym


def test_gym_rows_and_scoring():
    pytest.importorskip("reasoning_gym")
    table = gym_rows("basic_arithmetic", 5, seed=1)
    assert table.schema == SCHEMAS["prompts"] and table.num_rows == 5
    assert all(r["question"].strip() and r["reference"].strip() for r in table.to_pylist())
    assert gym_rows("basic_arithmetic", 5, seed=1).equals(table)
    row = table.to_pylist()[0]
    assert gym_score("basic_arithmetic", row["reference"], row) == 1.0
    assert gym_score("basic_arithmetic", "not a number", row) == 0.0
    result = load_source("gym:basic_arithmetic", "qa", None, 5, 1)
    assert result.table.column("answer").to_pylist() == table.column("reference").to_pylist()
    with pytest.raises(DataError, match="not registered"):
        gym_rows("no_such_task", 5, 0)


def test_load_source_reads_files(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD["prompts"])
    assert load_source(str(path), "prompts", None, 5, 0).table.num_rows == 2


# ----------------------------------------------------------------------------- edges


def test_line_limit_is_exact_and_ignores_crlf(tmp_path):
    row = json.dumps({"question": "q", "answer": "a"}).encode()
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(row + b"\r\n" + json.dumps({"question": "qq", "answer": "a"}).encode() + b"\r\n")
    result = load(path, "qa", max_line_bytes=len(row))
    assert result.table.num_rows == 1
    assert result.quarantined[0]["reason"] == f"line too long ({len(row) + 1} bytes, limit {len(row)})"


def test_huge_integer_rating_is_quarantined(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"prompt": "p", "response": "r", "rating": 1' + "0" * 400 + "}\n"
                    '{"prompt": "p", "response": "s", "rating": 2}\n')
    result = load(path, "ratings")
    assert result.table.num_rows == 1
    assert result.quarantined[0]["reason"].startswith("field 'rating': expected an integer 1-5, got 1000")


def test_invalid_utf8_in_a_csv_row_costs_only_that_row(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes(b"question,answer\nq1,a1\nq\xff2,a2\nq3,a3\n")
    result = load(path, "qa")
    assert [r["question"] for r in result.table.to_pylist()] == ["q1", "q3"]
    assert [(q["row"], q["reason"]) for q in result.quarantined] == [(2, "invalid UTF-8")]


def test_importable_without_torch():
    code = "import sys, rlhf.data; assert 'torch' not in sys.modules and 'reasoning_gym' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])


def test_the_operators_system_prompt_leads_a_chat_without_one():
    from rlhf.data.prompts import with_system_prompt

    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    assert with_system_prompt(chat, "") == chat
    assert with_system_prompt(chat, "Answer briefly.") == [{"role": "system", "content": "Answer briefly."}, *chat]
    own = [{"role": "system", "content": "You are a pirate."}, *chat]
    assert with_system_prompt(own, "Answer briefly.") == own  # the caller's own system turn is kept
    developer = [{"role": "developer", "content": "Be terse."}, *chat]
    assert with_system_prompt(developer, "Answer briefly.") == developer
