"""Human in the loop: the review store, queue selection, reviewer agreement, the review API and
round bookkeeping (fast); the review page in a real headless chromium against Ray Serve, and
two training rounds on a tiny model that learn what scripted reviewers prefer (slow)."""

from __future__ import annotations

import json
import random
import shutil
import socket
import sqlite3
import tempfile
from pathlib import Path

import pytest

from rlhf.config.tree import load_config
from rlhf.config.typed_yaml import ConfigError
from rlhf.config.workflow import ReviewConfig
from rlhf.data.heldout import question_key
from rlhf.data.kinds import load
from rlhf.data.readers import DataError
from rlhf.human.agreement import krippendorff_alpha, pairwise
from rlhf.human.feedback import AnswerRecord, FeedbackStore, export_feedback
from rlhf.human.review_queue import Candidate, plan_batch
from rlhf.human.review_store import NewItem, ReviewError, ReviewStore
from serve.openai_api import ApiError, parse_model

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "tests" / "artifacts"
RATE = {"accuracy": 4, "relevance": 4, "clarity": 3, "helpfulness": 5}

# ----------------------------------------------------------------------------- agreement


def test_krippendorff_alpha_by_hand():
    # values 1,2,3 | 3,3: D_o = (2*(1+4+1)/2)/5 = 1.2; D_e = 2*(1*1*1 + 1*3*4 + 1*3*1)/(5*4) = 1.6
    assert krippendorff_alpha([[1, 2, 3], [3, 3]], "interval") == pytest.approx(1 - 1.2 / 1.6)
    # two reviewers swap their labels on two items: D_o = 1, D_e = 8/12
    assert krippendorff_alpha([["a", "b"], ["b", "a"]], "nominal") == pytest.approx(-0.5)
    assert krippendorff_alpha([[1, 1], [4, 4], [2]], "interval") == 1.0  # single labels do not count
    assert krippendorff_alpha([[3], [4]]) is None  # nothing pairable
    assert krippendorff_alpha([[3, 3], [3, 3]]) is None  # no variation: undefined


def test_pairwise_agreement_by_hand():
    stats = pairwise([[5, 3], [4, 4, 5], [2]])
    assert stats == {"items": 2, "pairs": 4, "exact": 0.25, "within_1": 0.75, "mean_abs_diff": 1.0}
    assert pairwise([["x", "y"], ["x", "x"]], numeric=False) == {"items": 2, "pairs": 2, "exact": 0.5}


# ----------------------------------------------------------------------------- store


def _answer(store, rid, question, text, **extra):
    store.record_answer(AnswerRecord(rid, extra.pop("route", "ask"), "m", question, text, "stop", **extra))


@pytest.fixture
def stores(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    reviews = ReviewStore(store)
    for rid, q, text in [("a1", "What is 2+2?", "4"), ("a2", "What is 2+2?", "5"), ("b1", "Capital of France?", "Lyon"),
                         ("c1", "Name a river.", "The Seine.")]:
        _answer(store, rid, q, text)
    reviews.add_items([NewItem("compare", "disagree", "What is 2+2?", "a1", "a2", 0.7),
                       NewItem("rate", "random", "Capital of France?", "b1"),
                       NewItem("rate", "uncertain", "Name a river.", "c1")], needed=2)
    yield store, reviews
    store.close()


def _ids(reviews, reviewer="alice"):
    items = reviews.queue_for(reviewer)["items"]
    return {i["question"]: i["id"] for i in items}


def _count(store):
    return store.read("SELECT COUNT(*) AS n FROM reviews")[0]["n"]


def test_bad_reviews_are_refused_and_nothing_is_written_twice(stores):
    store, reviews = stores
    ids = _ids(reviews)
    first = reviews.submit(ids["Capital of France?"], "alice", ratings=RATE, comment="wrong city")
    bad = [
        (dict(item_id="item-nope", ratings=RATE), 404, "no item 'item-nope' in the review queue"),
        (dict(item_id=ids["Capital of France?"], ratings=RATE), 409, "already reviewed"),
        (dict(item_id=ids["Name a river."], ratings={**RATE, "clarity": 6}), 400, "ratings.clarity"),
        (dict(item_id=ids["Name a river."], ratings={**RATE, "clarity": 0}), 400, "from 1 to 5"),
        (dict(item_id=ids["Name a river."], ratings={**RATE, "clarity": True}), 400, "ratings.clarity"),
        (dict(item_id=ids["Name a river."], ratings={"accuracy": 3}), 400, "ratings.relevance"),
        (dict(item_id=ids["Name a river."], ratings={**RATE, "style": 3}), 400, "unknown aspect"),
        (dict(item_id=ids["Name a river."], preferred="c1"), 400, "nothing to prefer"),
        (dict(item_id=ids["What is 2+2?"], ratings=RATE), 400, "pick the better one"),
        (dict(item_id=ids["What is 2+2?"], preferred="b1"), 400, "one of the item's two answers"),
        (dict(item_id=ids["What is 2+2?"], preferred="a1", correction="  "), 400, "correction is empty"),
    ]
    for kwargs, status, needle in bad:
        with pytest.raises(ReviewError) as err:
            reviews.submit(reviewer="alice", **kwargs)
        assert err.value.status == status and needle in str(err.value), kwargs
    assert _count(store) == 1 and first == 1
    reviews.submit(ids["Capital of France?"], "bob", ratings=RATE)
    with pytest.raises(ReviewError) as closed:  # two reviews were wanted: the item has left the queue
        reviews.submit(ids["Capital of France?"], "carol", ratings=RATE)
    assert closed.value.status == 409 and "left the queue" in str(closed.value)
    with pytest.raises(sqlite3.IntegrityError):  # the table itself refuses a second review
        with store.transaction(durable=True) as conn:
            conn.execute("INSERT INTO reviews (created, item_id, reviewer) VALUES (0, ?, 'alice')",
                         (ids["Capital of France?"],))
    assert _count(store) == 2


def test_each_reviewer_sees_open_items_they_have_not_reviewed(stores):
    store, reviews = stores
    ids = _ids(reviews)
    start = reviews.queue_for("alice")
    assert (start["done"], start["left"], len(start["items"])) == (0, 3, 3)
    compare = next(i for i in start["items"] if i["kind"] == "compare")
    assert [a["id"] for a in compare["answers"]] == ["a1", "a2"] and "reason" not in compare
    reviews.submit(ids["What is 2+2?"], "alice", preferred="a1")
    reviews.submit(ids["Name a river."], "bob", ratings=RATE)
    reviews.submit(ids["Name a river."], "carol", ratings=RATE)
    alice = reviews.queue_for("alice")
    assert (alice["done"], alice["left"]) == (1, 1)  # her own review, and an item that has two already
    assert [i["question"] for i in alice["items"]] == ["Capital of France?"]
    assert reviews.queue_for("dave", limit=0) == {"reviewer": "dave", "items": [], "done": 0, "left": 2}
    assert reviews.open_question_keys() == {question_key("What is 2+2?"), question_key("Capital of France?")}


def test_reviews_feed_the_export_with_production_feedback(stores, tmp_path):

    store, reviews = stores
    ids = _ids(reviews)
    store.add_feedback("b1", rating=1)  # a user's verdict, replaced by the reviewers' on the same answer
    _answer(store, "u1", "Is water wet?", "yes")
    _answer(store, "u2", "Is water wet?", "no")
    store.add_feedback("u1", other_id="u2", preferred="u1")
    reviews.submit(ids["What is 2+2?"], "alice", preferred="a1", correction="2 + 2 = 4.")
    reviews.submit(ids["What is 2+2?"], "bob", preferred="a1")
    reviews.submit(ids["Capital of France?"], "alice", ratings={**RATE, "accuracy": 1})  # mean 3.25
    reviews.submit(ids["Capital of France?"], "bob", ratings={**RATE, "accuracy": 2})  # mean 3.5 -> 3.375 -> 3
    reviews.submit(ids["Name a river."], "alice", ratings=RATE)  # mean 4.0
    written = export_feedback(store.path, tmp_path / "all")
    ratings = {r["response"]: r["rating"] for r in load(written["ratings"]["path"], "ratings").table.to_pylist()}
    assert ratings == {"Lyon": 3, "The Seine.": 4}
    prefs = {(p["prompt"], p["chosen"], p["rejected"])
             for p in load(written["preferences"]["path"], "preferences").table.to_pylist()}
    assert prefs == {("What is 2+2?", "4", "5"), ("What is 2+2?", "2 + 2 = 4.", "4"),
                     ("What is 2+2?", "2 + 2 = 4.", "5"), ("Is water wet?", "yes", "no")}
    qa = load(written["corrections"]["path"], "qa").table.to_pylist()
    assert [(r["question"], r["answer"]) for r in qa] == [("What is 2+2?", "2 + 2 = 4.")]
    reviews_only = export_feedback(store.path, tmp_path / "reviews", production=False)
    assert reviews_only["preferences"]["rows"] == 3 and reviews_only["ratings"]["rows"] == 2


def test_an_empty_answer_is_left_out_of_the_export_and_counted(stores, tmp_path):
    store, _ = stores
    _answer(store, "e1", "Say nothing.", "")  # the model stopped at once
    _answer(store, "e2", "Say nothing.", "OK.")
    store.add_feedback("e1", rating=1)
    store.add_feedback("e2", rating=5)
    store.add_feedback("e1", other_id="e2", preferred="e2")
    written = export_feedback(store.path, tmp_path / "x")
    assert written["ratings"]["rows"] == 1 and written["ratings"]["dropped"] == {"field 'response': empty string": 1}
    assert written["preferences"]["rows"] == 0
    assert written["preferences"]["dropped"] == {"field 'rejected': empty string": 1}
    assert load(written["ratings"]["path"], "ratings").table.to_pylist() == [
        {"prompt": "Say nothing.", "response": "OK.", "rating": 5}]


def test_a_split_vote_teaches_nothing(stores, tmp_path):
    store, reviews = stores
    ids = _ids(reviews)
    reviews.submit(ids["What is 2+2?"], "alice", preferred="a1")
    reviews.submit(ids["What is 2+2?"], "bob", preferred="a2")
    assert export_feedback(store.path, tmp_path / "x")["preferences"]["rows"] == 0


def test_agreement_report_matches_the_hand_computed_numbers(stores):
    store, reviews = stores
    ids = _ids(reviews)
    reviews.submit(ids["Capital of France?"], "alice", ratings={**RATE, "accuracy": 5})
    reviews.submit(ids["Capital of France?"], "bob", ratings={**RATE, "accuracy": 3})
    reviews.submit(ids["Name a river."], "alice", ratings={**RATE, "accuracy": 2})
    reviews.submit(ids["Name a river."], "bob", ratings={**RATE, "accuracy": 2})
    reviews.submit(ids["What is 2+2?"], "alice", preferred="a1")
    reviews.submit(ids["What is 2+2?"], "bob", preferred="a1")
    rep = reviews.agreement()
    assert rep["reviews"] == 6 and rep["reviewers"] == {"alice": 3, "bob": 3}
    acc = rep["rate"]["aspects"]["accuracy"]
    assert (acc["items"], acc["pairs"], acc["exact"], acc["within_1"], acc["mean_abs_diff"]) == (2, 2, 0.5, 0.5, 1.0)
    assert acc["alpha"] == pytest.approx(krippendorff_alpha([[5, 3], [2, 2]]))
    assert rep["rate"]["aspects"]["clarity"]["alpha"] is None  # every clarity rating was 3
    assert rep["compare"] == {"items": 1, "pairs": 1, "exact": 1.0, "alpha": None}


def test_endpoint_answers_worth_a_review_are_offered_once(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    reviews = ReviewStore(store)
    _answer(store, "ok", "Q1?", "fine")
    _answer(store, "down", "Q2?", "bad answer")
    _answer(store, "undone", "Q3?", "meh")
    _answer(store, "blocked", "Q4?", "I'm sorry, ...", blocked="output_pii", withheld="mail x@y.org")
    _answer(store, "refused", "Q5?", "I'm sorry, ...", blocked="prompt_injection")  # input guard: no model text
    store.add_feedback("down", thumbs="down")
    store.add_feedback("undone", thumbs="down")
    store.add_feedback("undone", thumbs="up")  # the user changed their mind
    offered = reviews.production_answers(10)
    assert [(p["id"], p["reason"], p["text"]) for p in offered] == [
        ("blocked", "flagged", "mail x@y.org"), ("down", "thumbs_down", "bad answer")]
    reviews.add_items([NewItem("rate", "thumbs_down", "Q2?", "down", source_id="down")], needed=1)
    assert [p["id"] for p in reviews.production_answers(10)] == ["blocked"]
    store.close()


def test_a_database_from_before_reviews_gains_the_new_column_and_tables(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE answers (id TEXT PRIMARY KEY, created REAL NOT NULL, route TEXT NOT NULL, "
                 "model TEXT NOT NULL, prompt TEXT NOT NULL, messages TEXT, answer TEXT NOT NULL, finish_reason TEXT, "
                 "blocked TEXT, prompt_tokens INTEGER, completion_tokens INTEGER)")
    conn.execute("INSERT INTO answers VALUES ('old', 0, 'ask', 'm', 'Q?', NULL, 'A', 'stop', NULL, 1, 1)")
    conn.commit()
    conn.close()
    store = FeedbackStore(path)
    _answer(store, "new", "Q?", "B", withheld=None)
    assert {r["id"] for r in store.read("SELECT id, withheld FROM answers")} == {"old", "new"}
    assert store.read("SELECT COUNT(*) AS n FROM review_items")[0]["n"] == 0
    store.close()


def test_the_endpoint_keeps_the_words_its_output_guard_withheld():
    from serve.answers import Answer, Job, answer_record
    from serve.engine import Completion

    job = Job("ans-1", "ask", "Q?", "Q?", [1, 2, 3], None)
    gen = Completion("call me at 555-123-4567", "stop", 3, 9)
    refused = answer_record(job, Answer("I'm sorry, ...", "content_filter", gen, {"reason": "output_pii"}), "m")
    assert (refused.answer, refused.blocked, refused.withheld) == ("I'm sorry, ...", "output_pii", gen.text)
    fine = answer_record(job, Answer("4", "stop", Completion("4", "stop", 3, 1), None), "m")
    assert fine.withheld is None and fine.blocked is None
    refused_early = answer_record(job, Answer("I'm sorry", "content_filter", None, {"reason": "pii"}), "m")
    assert refused_early.withheld is None  # the input guard refused: the model wrote nothing


# ----------------------------------------------------------------------------- queue selection


def _cand(q, a="x y", b="p q", rules=(0.0, 0.0), rm=None):
    return Candidate(q, [a, b], list(rules), list(rm) if rm is not None else None)


def test_plan_takes_production_then_random_then_uncertain_and_disagree_in_turn():
    r = ReviewConfig(batch_size=6, random_fraction=1 / 6, production_fraction=2 / 6)
    production = [{"id": "p1", "prompt": "Q-flag?", "text": "withheld", "reason": "flagged"},
                  {"id": "p2", "prompt": "Q-down?", "text": "bad", "reason": "thumbs_down"},
                  {"id": "p3", "prompt": "Q-more?", "text": "bad", "reason": "thumbs_down"}]  # over the cap
    candidates = [_cand(f"Q{i}?", rules=(i / 10, 0.0), rm=(i, i + 0.1 * i)) for i in range(1, 9)]
    plan = plan_batch(candidates, production, set(), r, random.Random(0))
    assert len(plan) == 6 and len({question_key(p.question) for p in plan}) == 6
    by = {}
    for p in plan:
        by.setdefault(p.reason, []).append(p)
    assert {k: len(v) for k, v in by.items()} == {"flagged": 1, "thumbs_down": 1, "random": 1, "uncertain": 2,
                                                  "disagree": 1}
    assert by["flagged"][0].texts == ["withheld"] and by["flagged"][0].source_id == "p1"
    assert by["thumbs_down"][0].answer_id == "p2" and by["thumbs_down"][0].texts == []
    assert by["random"][0].kind == "rate" and len(by["random"][0].texts) == 1
    picked = {p.question for p in by["random"]}
    uncertain = [c for c in candidates if c.question not in picked][:2]  # smallest RM margins first
    assert [p.question for p in by["uncertain"]] == [c.question for c in uncertain]
    assert [p.score for p in by["uncertain"]] == pytest.approx([c.margin for c in uncertain])
    # the disagree slot goes to the largest rule difference among the questions left
    left = [c for c in candidates if c.question not in picked | {c.question for c in uncertain}]
    assert by["disagree"][0].question == max(left, key=lambda c: c.disagreement).question
    assert all(p.kind == "compare" and sorted(p.texts) == ["p q", "x y"] for p in by["uncertain"] + by["disagree"])


def test_plan_deduplicates_questions_and_skips_what_is_open_or_identical():
    r = ReviewConfig(batch_size=10, random_fraction=0.0, production_fraction=0.0)
    candidates = [_cand("What is 2+2?", rules=(1, 0)), _cand("what is 2 + 2", rules=(1, 0)),
                  _cand("Same answers?", a="42", b=" 42 "), _cand("Already open?"), _cand("Fresh?")]
    plan = plan_batch(candidates, [], {question_key("Already open!")}, r, random.Random(1))
    assert sorted(p.question for p in plan) == ["Fresh?", "What is 2+2?"]
    assert all(p.reason == "disagree" for p in plan)  # no reward model: nothing is `uncertain`


def test_plan_never_exceeds_the_batch():
    r = ReviewConfig(batch_size=3, random_fraction=0.0, production_fraction=0.0)
    candidates = [_cand(f"Q{i}?", rm=(0, i)) for i in range(10)]
    plan = plan_batch(candidates, [], set(), r, random.Random(2))
    assert len(plan) == 3 and {p.reason for p in plan} == {"uncertain", "disagree"}


def test_disagreement_counts_rule_difference_and_text_distance():
    same = _cand("Q?", a="the answer is 4", b="the answer is 4")
    apart = _cand("Q?", a="the answer is 4", b="no idea", rules=(1.0, 0.0))
    assert same.disagreement == pytest.approx(0.0) and not same.distinct
    assert apart.disagreement == pytest.approx(2.0)  # rules differ by 1, no shared token


# ----------------------------------------------------------------------------- config, API pieces


def test_review_config_checks():
    assert load_config(None, ["review.method=rm+rl"]).review.method == "rm+rl"
    for override, needle in [("review.method=ppo", "review.method"), ("review.batch_size=0", "review.batch_size"),
                             ("review.random_fraction=0.8", "must not exceed 1"),
                             ("review.promote_metric=length", "review.promote_metric"),
                             ("review.reviewers_per_item=0", "reviewers_per_item")]:
        with pytest.raises(ConfigError, match=needle):
            load_config(None, [override] + (["review.production_fraction=0.5"] if "random" in override else []))


def test_reviewer_keys_name_the_reviewer(monkeypatch):
    from serve.application import check_serve_config
    from serve.review_api import ReviewerKeys

    with pytest.raises(ConfigError, match="share a key"):
        check_serve_config(load_config(None, ["serve.reviewer_keys={alice: k, bob: k}"]))

    monkeypatch.setenv("RLHF_REVIEWER_KEYS", "bob=env-key, broken, =x")
    keys = ReviewerKeys({"alice": "cfg-key"}, ("boss",))
    assert keys.reviewer({"authorization": "Bearer cfg-key"}) == "alice"
    assert keys.reviewer({"x-api-key": "env-key"}) == "bob"
    assert keys.reviewer({"authorization": "Bearer boss"}) == "admin"
    for headers, needle in (({}, "missing reviewer key"), ({"authorization": "Bearer nope"}, "invalid reviewer key")):
        with pytest.raises(ApiError) as err:
            keys.reviewer(headers)
        assert err.value.status == 401 and needle in err.value.message
    monkeypatch.delenv("RLHF_REVIEWER_KEYS")
    with pytest.raises(ApiError) as off:
        ReviewerKeys({}, ()).reviewer({"authorization": "Bearer x"})
    assert off.value.status == 403


@pytest.mark.parametrize("body, needle", [
    ({"ratings": {**RATE, "accuracy": 6}}, "ratings.accuracy"),
    ({"ratings": {**RATE, "accuracy": "5"}}, "ratings.accuracy"),
    ({"ratings": {"accuracy": 5}}, "missing field 'ratings.relevance'"),
    ({"rating": 5}, "rating"),  # a misspelt field is an error, not a silently empty review
])
def test_review_requests_are_checked_field_by_field(body, needle):
    from serve.review_api import ReviewRequest

    with pytest.raises(ApiError) as err:
        parse_model(ReviewRequest, body)
    assert err.value.status == 400 and needle in err.value.message


def test_the_page_is_plain_static_files_with_no_inline_code():
    from serve.review_api import PAGE, static_file

    html, media = static_file(PAGE)
    assert media.startswith("text/html") and b"<script src=\"/review/static/review.js\"" in html
    assert b"<script>" not in html and b"style=" not in html  # the CSP allows files from this server only
    js = static_file("review.js")[0].decode()
    assert "innerHTML" not in js and "textContent" in js  # server text never becomes markup
    for name in ("../app.py", "review.py", "feedback.sqlite"):
        with pytest.raises(ApiError) as err:
            static_file(name)
        assert err.value.status == 404


def test_round_history_promotion_and_the_current_model(tmp_path, tiny_model_dir):
    from rlhf.human.rounds import current_model, history, is_better_or_equal, promoted

    assert is_better_or_equal("accuracy", 0.50, 0.52, 0.05) and not is_better_or_equal("accuracy", 0.4, 0.52, 0.05)
    assert is_better_or_equal("refusal", 0.10, 0.12, 0.0) and not is_better_or_equal("refusal", 0.2, 0.12, 0.0)
    assert not is_better_or_equal("accuracy", None, 0.5, 0.0)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"review.run_dir={tmp_path}"])
    assert current_model(cfg) == tiny_model_dir and history(tmp_path) == []
    for n, ok in ((0, True), (1, True), (2, False)):
        folder = tmp_path / f"round-{n:03d}"
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps({"round": n, "promoted": ok, "model": f"m{n}"}))
    (tmp_path / "round-003").mkdir()  # never finished: no report
    assert [r["round"] for r in history(tmp_path)] == [0, 1, 2]
    assert promoted(tmp_path)["round"] == 1 and current_model(cfg) == "m1"


def test_a_worse_round_is_kept_but_not_promoted_and_its_report_says_so():
    from rlhf.human.round_report import markdown
    from rlhf.human.rounds import decide

    best = {"round": 1, "metrics": {"accuracy": 0.50, "refusal": 0.1}}
    assert decide("accuracy", 0.52, best, 0.0) == (True, "accuracy 0.5200 is not worse than 0.5000 of round 1 "
                                                          "(tolerance 0)")
    ok, why = decide("accuracy", 0.40, best, 0.05)
    assert not ok and why == "accuracy 0.4000 is worse than 0.5000 of round 1 (tolerance 0.05)"
    assert decide("token_f1", 0.3, best, 0.0)[0] is False  # the promoted round has no value to compare with
    metrics = {"accuracy": 0.40, "length": 9.0}
    versus = {"diff": {"accuracy": {"mean": -0.1, "ci95": [-0.2, 0.0]}}, "win_rate": 0.4, "win_rate_ci95": [0.3, 0.5],
              "win_judge": "accuracy, then token_f1"}
    report = {"round": 3, "model": "/runs/r3", "promoted": ok, "decision": why, "metric": "accuracy", "value": 0.4,
              "base_round": 1, "previous_round": 2, "target": 0.9, "target_reached": False, "n": 20,
              "validation": {"data": "heldout.jsonl", "max_new_tokens": 32}, "metrics": metrics,
              "training": {"method": "dpo", "base_model": "/runs/r1", "pairs": 40,
                           "rows": {"preferences": 45, "ratings": 10, "corrections": 3}},
              "vs_promoted": {"round": 1, "metrics": {"accuracy": 0.5}, **versus},
              "vs_previous": {"round": 2, "metrics": {"accuracy": 0.45}, **versus},
              "agreement": {"reviews": 0, "reviewers": {}, "rate": {"aspects": {}, "overall": {
                  "items": 0, "pairs": 0, "exact": None, "within_1": None, "mean_abs_diff": None, "alpha": None}},
                  "compare": {"items": 0, "pairs": 0, "exact": None, "alpha": None}}}
    history = [{"round": n, "promoted": n < 2, "model": f"m{n}", "metrics": {"accuracy": a}}
               for n, a in ((0, 0.3), (1, 0.5), (2, 0.45))] + [report]
    md = markdown(report, history)
    assert md.startswith("# Review round 3: kept, NOT promoted")
    assert "decision: accuracy 0.4000 is worse than 0.5000 of round 1 (tolerance 0.05): kept, NOT promoted" in md
    assert "target accuracy 0.9: not reached yet" in md
    assert "| accuracy | 0.500 | 0.400 | -0.100 [-0.200, 0.000] |" in md
    assert "Compared with round 2 (the previous round, not promoted)" in md and "| 3 | 0.400 | no |" in md


def test_a_round_needs_a_validation_set_reviews_and_something_to_learn(tmp_path, tiny_model_dir):
    from rlhf.human.rounds import RoundError, retrain, run_round

    base = [f"model.path={tiny_model_dir}", f"review.run_dir={tmp_path / 'rounds'}",
            f"serve.feedback_db={tmp_path / 'fb.sqlite'}"]
    with pytest.raises(ConfigError, match="eval.data"):
        run_round(load_config(None, base))
    with pytest.raises(RoundError, match="rm\\+rl needs the RL runner"):
        run_round(load_config(None, base + ["eval.data=gym:basic_arithmetic", "review.method=rm+rl"]))
    with pytest.raises(RoundError, match="does not exist"):
        run_round(load_config(None, base + ["eval.data=gym:basic_arithmetic"]))
    FeedbackStore(tmp_path / "fb.sqlite").close()
    empty = export_feedback(tmp_path / "fb.sqlite", tmp_path / "export")
    with pytest.raises(RoundError, match="nothing to learn from"):
        retrain(load_config(None, base), tiny_model_dir, empty, tmp_path / "r", None, print)


def test_review_commands_fail_cleanly(tmp_path):
    from typer.testing import CliRunner

    from rlhf.cli.main import app

    runner = CliRunner()
    bad = runner.invoke(app, ["review", "queue", str(tmp_path / "none.yaml")])
    assert bad.exit_code == 2 and "config file not found" in bad.output
    no_db = runner.invoke(app, ["review", "agreement", "--db", str(tmp_path / "none.sqlite")])
    assert no_db.exit_code == 2 and "does not exist" in no_db.output
    config = tmp_path / "c.yaml"
    config.write_text(f"serve: {{feedback_db: {tmp_path / 'fb.sqlite'}}}\n")
    no_eval = runner.invoke(app, ["round", str(config)])
    assert no_eval.exit_code == 2 and "eval.data" in no_eval.output
    store = FeedbackStore(tmp_path / "fb.sqlite")
    _answer(store, "a", "Q?", "A")
    reviews = ReviewStore(store)
    reviews.add_items([NewItem("rate", "random", "Q?", "a")], needed=2)
    item = reviews.queue_for("x")["items"][0]["id"]
    reviews.submit(item, "alice", ratings=RATE)
    reviews.submit(item, "bob", ratings={**RATE, "accuracy": 2})
    store.close()
    shown = runner.invoke(app, ["review", "agreement", str(config)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "2 reviews by 2 reviewer(s)" in shown.output and "rating: accuracy" in shown.output


# ----------------------------------------------------------------------------- slow: the page in a browser

REVIEWERS = {"alice": "rk-alice", "bob": "rk-bob"}
USER_KEY, ADMIN_KEY = "user-key", "admin-key"
QUESTIONS = "gym:chain_sum?min_terms=2&max_terms=2&max_digits=1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser_config(tmp_path: Path, tiny_model_dir: str):
    return load_config(None, [
        f"model.path={tiny_model_dir}", "model.max_prompt_tokens=64", f"data.train={QUESTIONS}", "data.gym_size=64",
        f"eval.data={QUESTIONS}", "eval.size=16", "rollout.max_new_tokens=12",
        f"serve.feedback_db={tmp_path / 'fb.sqlite'}", f"serve.api_keys=[{USER_KEY}]",
        f"serve.admin_keys=[{ADMIN_KEY}]",
        "serve.reviewer_keys={" + ", ".join(f"{k}: {v}" for k, v in REVIEWERS.items()) + "}",
        "serve.max_tokens_limit=64", "serve.default_max_tokens=12", "serve.health_check_period_s=2",
        # An untrained scalar head on the tiny model: real scores, so the `uncertain` slice is real too.
        f"review.reward_model={tiny_model_dir}", "review.candidates=16", "review.batch_size=8",
        "review.random_fraction=0.25", "review.production_fraction=0.25", "review.reviewers_per_item=2"])


@pytest.fixture
def review_server(tiny_model_dir, tmp_path):
    import ray
    from ray import serve

    from serve.application import app_for
    from serve.run import SERVE_ENV, start_ray

    cfg = _browser_config(tmp_path, tiny_model_dir)
    port = _free_port()
    with pytest.MonkeyPatch.context() as env:
        for key, value in SERVE_ENV.items():
            env.setenv(key, value)
        env.delenv("RAY_ADDRESS", raising=False)
        ours = start_ray(cfg)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_for(tiny_model_dir, cfg), name="review-test", route_prefix="/")
        yield cfg, f"http://127.0.0.1:{port}"
        serve.shutdown()
        if ours:
            ray.shutdown()


def _chromium():
    """Debian's chromium through its chromedriver (scripts/setup.sh installs both)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed; scripts/setup.sh installs them "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1500", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


class Page:
    """The review page as the test drives it: what is shown, and waiting for it to change."""

    def __init__(self, driver):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.By = driver, By
        self.wait = WebDriverWait(driver, 30)

    def el(self, css: str):
        return self.d.find_element(self.By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.el(css).text

    def item(self) -> tuple[str, str]:
        form = self.el("#review")
        return form.get_attribute("data-kind"), form.get_attribute("data-item")

    def wait_text(self, css: str, needle: str) -> None:
        self.wait.until(lambda d: needle in d.find_element(self.By.CSS_SELECTOR, css).text)

    def keys(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        for key in keys:
            ActionChains(self.d).send_keys(key).perform()

    def show_kind(self, kind: str) -> str:
        """Skip (key S) until an item of `kind` is shown; returns its id."""
        for _ in range(20):
            shown, item_id = self.item()
            if shown == kind:
                return item_id
            self.keys("s")
            self.wait.until(lambda d: self.item()[1] != item_id)
        raise AssertionError(f"no {kind} item in the queue")

    def submitted(self, done: int) -> None:
        self.wait_text("#progress-text", f"{done} done")


def _seed_production_answers(base: str) -> str:
    """Two real answers from the endpoint, one of them disliked by its user."""
    import httpx

    with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {USER_KEY}"}) as http:
        answers = [http.post("/ask", json={"question": q, "max_tokens": 8}).json()
                   for q in ("Name a river in France.", "What is the capital of Italy?")]
        assert http.post("/feedback", json={"id": answers[0]["id"], "thumbs": "down"}).status_code == 200
    return answers[0]["id"]


def _save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    print(f"\nreview page screenshot: {shot} (copy: {ARTIFACTS / shot.name})")
    return shot


@pytest.mark.slow
def test_review_page_in_a_real_browser(review_server, tmp_path, tiny_model_dir):
    import httpx

    from rlhf.human.review_queue import build_queue

    cfg, base = review_server
    disliked = _seed_production_answers(base)
    summary = build_queue(cfg, tiny_model_dir)
    assert summary["items"] == 8 and summary["reasons"]["thumbs_down"] == 1 and summary["reasons"]["random"] == 2
    assert summary["reasons"].get("uncertain", 0) >= 2 and summary["reasons"].get("disagree", 0) >= 1, summary

    driver = _chromium()
    try:
        page = Page(driver)
        driver.get(f"{base}/review")
        page.wait.until(lambda d: page.el("#login").is_displayed())
        page.el("#key").send_keys("not-a-key\n")
        page.wait_text("#error", "invalid reviewer key")  # a wrong key: a clear message, still signed out
        page.el("#key").send_keys(REVIEWERS["alice"] + "\n")
        page.wait_text("#who", "Signed in as alice")
        assert page.text("#progress-text") == "0 done, 8 left"

        # 1. rate with the mouse, with a comment
        mouse_item = page.show_kind("rate")
        for aspect, value in {"accuracy": 2, "relevance": 3, "clarity": 4, "helpfulness": 2}.items():
            page.el(f'label[for="{aspect}-{value}"]').click()
        page.el("#comment").send_keys("Says nothing about the question.")
        _save_screenshot(driver, tmp_path, "review-page-rate.png")
        page.el("#submit").click()
        page.submitted(1)

        # 2. rate with the keyboard: 1-5 rate the highlighted aspect and move on, Enter submits
        key_item = page.show_kind("rate")
        assert key_item != mouse_item
        page.keys("4", "5", "3", "4", "\ue007")  # \ue007 is Enter
        page.submitted(2)

        # 3. compare with the mouse: answer B, with a corrected answer
        compare_item = page.show_kind("compare")
        b_id = page.el("#pick-1").get_attribute("value")
        page.el('label[for="pick-1"]').click()
        page.el("#correction").send_keys("2 plus 3 is 5.")
        page.el("#comment").send_keys("Neither answers the sum.")
        _save_screenshot(driver, tmp_path, "review-page.png")
        page.el("#submit").click()
        page.submitted(3)

        # 4. compare with the keyboard: A, then a correction (E), Ctrl+Enter from the text field
        key_compare = page.show_kind("compare")
        a_id = page.el("#pick-0").get_attribute("value")
        page.keys("a", "e")
        page.el("#correction").send_keys("The answer is 7.")
        from selenium.webdriver.common.keys import Keys

        page.el("#correction").send_keys(Keys.CONTROL, Keys.ENTER)
        page.submitted(4)

        # 5. a double submit: the same review arrives from elsewhere first; the page says so
        kind, twice = page.item()
        body = {"ratings": RATE} if kind == "rate" else {"preferred": page.el("#pick-0").get_attribute("value")}
        auth = {"Authorization": f"Bearer {REVIEWERS['alice']}"}
        assert httpx.post(f"{base}/review/items/{twice}", json=body, headers=auth, timeout=60).status_code == 200
        if kind == "rate":
            page.keys(*"4434")
        else:
            page.keys("a")
        page.el("#submit").click()
        page.wait_text("#error", "already reviewed this item")
        page.wait.until(lambda d: page.item()[1] != twice)
        page.wait_text("#progress-text", "5 done, 3 left")
    finally:
        driver.quit()

    store = FeedbackStore(cfg.serve.feedback_db)
    rows = {r["item_id"]: r for r in store.read("SELECT * FROM reviews WHERE reviewer = 'alice'")}
    assert len(rows) == 5  # the double submit was written once
    assert [rows[mouse_item][a] for a in ("accuracy", "relevance", "clarity", "helpfulness")] == [2, 3, 4, 2]
    assert rows[mouse_item]["comment"] == "Says nothing about the question."
    assert [rows[key_item][a] for a in ("accuracy", "relevance", "clarity", "helpfulness")] == [4, 5, 3, 4]
    assert rows[compare_item]["preferred_id"] == b_id and rows[compare_item]["correction"] == "2 plus 3 is 5."
    assert rows[key_compare]["preferred_id"] == a_id and rows[key_compare]["correction"] == "The answer is 7."
    items = {r["id"]: r for r in store.read(
        "SELECT i.*, a.answer AS a_text, o.answer AS o_text FROM review_items i JOIN answers a ON a.id = i.answer_id "
        "LEFT JOIN answers o ON o.id = i.other_id")}
    assert any(i["source_id"] == disliked and i["reason"] == "thumbs_down" for i in items.values())
    store.close()

    # The exported files as written (a random tiny model's answer may be blank, which the data
    # loader would quarantine; the export itself must still hold every review).
    written = export_feedback(cfg.serve.feedback_db, tmp_path / "export")
    exported = {name: [json.loads(line) for line in Path(w["path"]).read_text().splitlines()]
                for name, w in written.items()}
    prefs = {(p["prompt"], p["chosen"], p["rejected"]) for p in exported["preferences"]}
    c = items[compare_item]
    assert (c["question"], c["o_text"], c["a_text"]) in prefs  # B (the second answer) was picked
    assert {(c["question"], "2 plus 3 is 5.", c["a_text"]), (c["question"], "2 plus 3 is 5.", c["o_text"])} <= prefs
    mouse = items[mouse_item]
    assert {"prompt": mouse["question"], "response": mouse["a_text"], "rating": 3} in exported["ratings"]  # 2.75
    corrections = {(r["question"], r["answer"]) for r in exported["corrections"]}
    assert {(c["question"], "2 plus 3 is 5."), (items[key_compare]["question"], "The answer is 7.")} <= corrections
    loaded = load(written["corrections"]["path"], "qa")  # and they load as training data
    assert loaded.table.num_rows == len(exported["corrections"])

    _check_review_api(base, mouse_item, compare_item)


def _check_review_api(base: str, rate_item: str, compare_item: str) -> None:
    """Bad input over HTTP: 4xx with the app's JSON error body, and nothing written."""
    import httpx

    alice, bob = ({"Authorization": f"Bearer {REVIEWERS[n]}"} for n in ("alice", "bob"))
    with httpx.Client(base_url=base, timeout=60) as http:
        before = http.get("/review/agreement", headers=alice).json()["reviews"]
        cases = [
            ("/review/items/item-missing", {"ratings": RATE}, alice, 404, "in the review queue"),
            (f"/review/items/{rate_item}", {"ratings": {**RATE, "clarity": 6}}, bob, 400, "ratings.clarity"),
            (f"/review/items/{rate_item}", {"ratings": RATE}, alice, 409, "already reviewed"),
            (f"/review/items/{rate_item}", {"preferred": "x"}, bob, 400, "nothing to prefer"),
            (f"/review/items/{compare_item}", {"preferred": "not-an-answer"}, bob, 400, "two answers"),
            (f"/review/items/{rate_item}", {"ratings": RATE}, {}, 401, "missing reviewer key"),
            (f"/review/items/{rate_item}", {"ratings": RATE}, {"Authorization": "Bearer wrong"}, 401, "invalid"),
            (f"/review/items/{rate_item}", {"ratings": RATE}, {"Authorization": f"Bearer {USER_KEY}"}, 401, "invalid"),
        ]
        for path, body, headers, status, needle in cases:
            resp = http.post(path, json=body, headers=headers)
            assert resp.status_code == status, (path, body, resp.text)
            error = resp.json()["error"]
            assert needle in error["message"] and set(error) == {"message", "type", "param", "code"}
        assert http.get("/review/items", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/review/items?limit=x", headers=alice).status_code == 400
        assert http.get("/review/agreement", headers=alice).json()["reviews"] == before  # nothing written
        ok = http.post(f"/review/items/{rate_item}", json={"ratings": RATE}, headers=bob)
        assert ok.status_code == 200 and ok.json()["reviewer"] == "bob"
        report = http.get("/review/agreement", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        assert report["reviewers"] == {"alice": 5, "bob": 1}
        assert report["rate"]["aspects"]["accuracy"]["pairs"] == 1  # alice and bob on the same item
        page = http.get("/review")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]


# ----------------------------------------------------------------------------- slow: two rounds


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _sampled_digits(model_dir: str, questions: list[str], samples: int = 4, max_new_tokens: int = 16) -> float:
    """Digits per sampled answer (temperature 1) on the validation questions. Sampling, not the
    rounds' greedy answers: greedy decoding of a random tiny model flips all at once, while the
    sampled distribution shows how far the reviews moved the model."""
    import torch

    from rlhf.data.prompts import render_prompt
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    model = load_causal_lm(model_dir).eval()
    enc = tok([render_prompt(tok, q) for q in questions], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                             num_return_sequences=samples, pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(map(_digits, answers)) / len(answers)


def _script_reviews(db: Path) -> int:
    """The scripted reviewer picks the answer with more digits (the first of two that tie);
    returns the number of reviews given."""
    store = FeedbackStore(db)
    reviews = ReviewStore(store)
    items = reviews.queue_for("script", limit=500)["items"]
    for item in items:
        best = max(item["answers"], key=lambda a: _digits(a["text"]))
        reviews.submit(item["id"], "script", preferred=best["id"])
    store.close()
    return len(items)


@pytest.mark.slow
def test_two_rounds_learn_what_the_reviewers_prefer(tmp_path, tiny_model_dir):
    import ray
    from typer.testing import CliRunner

    from rlhf.cli.main import app
    from rlhf.human.review_queue import build_queue
    from rlhf.human.rounds import current_model, run_round

    config = tmp_path / "hitl.yaml"
    config.write_text(f"""
model: {{path: {tiny_model_dir}, max_prompt_tokens: 64}}
data: {{train: "{QUESTIONS}", gym_size: 200}}
eval: {{data: "{QUESTIONS}", size: 24, max_new_tokens: 16, bootstrap: 200}}
rollout: {{max_new_tokens: 16, temperature: 1.0}}
serve: {{feedback_db: {tmp_path / 'fb.sqlite'}}}
review: {{run_dir: {tmp_path / 'rounds'}, candidates: 64, batch_size: 64, random_fraction: 0.0,
          production_fraction: 0.0, reviewers_per_item: 1, method: dpo}}
dpo: {{lr: 0.001, beta: 0.1, epochs: 1, batch_size: 8, micro_batch_size: 4, max_length: 96, val_fraction: 0.2}}
""")
    cfg = load_config(config)
    ours = not ray.is_initialized()
    if ours:  # one local Ray for both rounds' Ray Train runs
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        # Round 1 through the Python API ...
        first = build_queue(cfg, current_model(cfg))
        assert first["items"] >= 30 and set(first["reasons"]) == {"disagree"}, first
        assert _script_reviews(cfg.serve.feedback_db) == first["items"]
        r1 = run_round(cfg)
        # ... round 2 through the commands a user runs.
        runner = CliRunner()
        queued = runner.invoke(app, ["review", "queue", str(config)], env={"COLUMNS": "200"})
        assert queued.exit_code == 0, queued.output
        assert _script_reviews(cfg.serve.feedback_db) >= 30
        # Round 2 is red-teamed, against a gate no model can pass: it must not be promoted.
        gated = ["review.redteam=true", "redteam.attempts=4", "redteam.cases=2", "redteam.max_new_tokens=8",
                 "redteam.gate.max_over_refusal=-1"]
        second = runner.invoke(app, ["round", str(config), *gated], env={"COLUMNS": "200"})
        assert second.exit_code == 0, second.output
        assert "round-002" in second.output and "report.md" in second.output
    finally:
        if ours:
            ray.shutdown()

    rounds = tmp_path / "rounds"
    r2 = json.loads((rounds / "round-002" / "report.json").read_text())
    assert r1["promoted"] and r1["base_round"] == 0 and r1["training"]["pairs"] > 0
    assert r2["base_round"] == 1 and r2["training"]["base_model"] == r1["model"]  # trained from round 1
    assert r1["redteam"] is None and r2["redteam"]["passed"] is False
    assert not r2["promoted"] and "the red-team gate failed (over-refusal" in r2["decision"], r2["decision"]
    assert (rounds / "round-002" / "redteam" / "report.json").is_file()
    assert r2["data"]["preferences"]["rows"] > r1["data"]["preferences"]["rows"]  # the reviews accumulate
    assert "win_rate" in r2["vs_promoted"] and r2["n"] == 24
    md = (rounds / "round-002" / "report.md").read_text()
    assert "# Review round 2" in md and "Compared with round 1" in md and "Rounds so far" in md
    questions = [json.loads(line)["question"] for line in
                 (rounds / "round-000" / "eval" / "answers.jsonl").read_text().splitlines()]
    digits = [_sampled_digits(json.loads((rounds / f"round-{n:03d}" / "report.json").read_text())["model"], questions)
              for n in (0, 1, 2)]
    print(f"\ndigits per sampled validation answer, rounds 0/1/2: {digits}")
    assert digits[0] < digits[1] < digits[2], digits


def test_a_models_reviewed_ratings_beside_the_judges_in_the_evaluation_report(tmp_path):
    from rlhf.evaluation.report import _markdown
    from rlhf.evaluation.reviewed import reviewer_ratings

    store = FeedbackStore(tmp_path / "fb.sqlite")
    reviews = ReviewStore(store)
    for rid, model, text in [("x1", "qa@v1", "Paris"), ("x2", "qa@v2", "Lyon"), ("x3", "qa@v2", "Nice")]:
        store.record_answer(AnswerRecord(rid, "ask", model, f"Question {rid}?", text, "stop"))
    reviews.add_items([NewItem("rate", "random", "Question x1?", "x1"), NewItem("rate", "random", "Question x2?", "x2"),
                       NewItem("rate", "random", "Question x3?", "x3"),
                       NewItem("compare", "disagree", "Question x2?", "x2", "x1")], needed=2)
    ids = {(i["kind"], i["answers"][0]["id"]): i["id"] for i in reviews.queue_for("alice")["items"]}
    reviews.submit(ids[("rate", "x1")], "alice", {"accuracy": 5, "relevance": 5, "clarity": 5, "helpfulness": 5})
    reviews.submit(ids[("rate", "x2")], "alice", {"accuracy": 2, "relevance": 4, "clarity": 3, "helpfulness": 1})
    reviews.submit(ids[("rate", "x2")], "bob", {"accuracy": 4, "relevance": 4, "clarity": 5, "helpfulness": 3})
    reviews.submit(ids[("rate", "x3")], "bob", {"accuracy": 3, "relevance": 1, "clarity": 4, "helpfulness": 2})
    reviews.submit(ids[("compare", "x2")], "bob", preferred="x2")  # a comparison carries no 1-5 rating
    store.close()
    v2, none = reviewer_ratings(tmp_path / "fb.sqlite", "qa@v2"), reviewer_ratings(tmp_path / "fb.sqlite", "qa@v9")
    # By hand over qa@v2's three reviews: accuracy (2+4+3)/3, relevance (4+4+1)/3, clarity (3+5+4)/3, helpful (1+3+2)/3
    assert v2 == {"model": "qa@v2", "accuracy": 3.0, "relevance": 3.0, "clarity": 4.0, "helpfulness": 2.0,
                  "reviews": 3, "answers": 2}
    assert none == {"model": "qa@v9", "accuracy": None, "relevance": None, "clarity": None, "helpfulness": None,
                    "reviews": 0, "answers": 0}
    result = {"model": "m", "data": {"source": "s", "evaluated": 1, "quarantined": 0, "skipped_no_reference": 0},
              "max_new_tokens": 8, "bootstrap": 10, "n": 1, "ci95": {}, "accuracy": 1.0, "human": v2,
              "judge_accuracy": 4.5}
    text = _markdown(result, [], None)
    assert "3 reviews of 2 production answers" in text
    assert "| accuracy | 3.000 | 4.500 |" in text and "| helpfulness | 2.000 | - |" in text
    with pytest.raises(ConfigError, match="eval.review_model"):
        load_config(None, [f"eval.review_db={tmp_path / 'fb.sqlite'}"])
    with pytest.raises(DataError, match="does not exist"):
        reviewer_ratings(tmp_path / "none.sqlite", "qa@v2")
