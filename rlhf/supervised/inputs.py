"""Inputs of the supervised stages: QA pairs for SFT, preference pairs for RM/DPO, and
`data pairs` (k generated answers per question, judged against the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from rlhf.config.tree import Config
from rlhf.config.workflow import FinetuneConfig
from rlhf.data.heldout import without_heldout
from rlhf.data.kinds import PAIRS_SCHEMA, load
from rlhf.data.prompts import encode_questions
from rlhf.data.readers import DataError
from rlhf.data.tables import load_source, save, split, to_pairs
from rlhf.models.loading import load_tokenizer, resolve_model_path
from rlhf.models.offline import OfflineEngine, inference_config
from rlhf.rl.curriculum import probe_scores
from rlhf.rl.rewards import combine
from rlhf.supervised.examples import answer_example, pair_example, rm_pair_example
from rlhf.supervised.trainer import FinetuneJob


def sft_job(cfg: Config, base: str, out_dir: str | Path) -> FinetuneJob:
    settings = cfg.sft
    result = load_source(settings.data, "qa", settings.fields, cfg.data.gym_size, cfg.data.seed)
    table, dropped = without_heldout(result.table, "question", cfg, "sft")
    train, val = split(table, settings.val_fraction, seed=cfg.data.seed)
    tok = load_tokenizer(base)

    def encode(rows):
        return [answer_example(tok, r["question"], r["answer"], settings.max_length, cfg.model.system_prompt,
                               cfg.model.chat_template) for r in rows.to_pylist()]

    return _job("sft", cfg, settings, base, out_dir, encode(train), encode(val), dropped)


def guess_kind(path: str) -> str:
    """preferences, ratings or rankings, from the columns of the file's first row."""
    first = _first_row(path)
    if "rating" in first:
        return "ratings"
    if "responses" in first:
        return "rankings"
    return "preferences"


def _first_row(path: str) -> dict:
    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return dict.fromkeys(pq.read_schema(p).names)
    if p.suffix == ".csv":
        return dict.fromkeys(p.open(encoding="utf-8", errors="replace").readline().strip().split(","))
    with p.open("rb") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                    return row if isinstance(row, dict) else {}
                except ValueError:
                    return {}
    return {}


def load_pairs(paths: list[str], fields: dict | None = None) -> pa.Table:
    """Merge preference pairs from several files of any pair-making kind."""
    tables = [to_pairs(load(p, guess_kind(p), fields)) for p in paths if p]
    if not tables:
        raise DataError("no preference data given")
    return pa.concat_tables(tables)


def pair_job(kind: str, cfg: Config, base: str, paths: list[str], out_dir: str | Path) -> FinetuneJob:
    settings: FinetuneConfig = getattr(cfg, kind)
    table, dropped = without_heldout(load_pairs(paths, settings.fields), "prompt", cfg, kind)
    train, val = split(table, settings.val_fraction, seed=cfg.data.seed)
    tok = load_tokenizer(base)

    def encode(rows):
        if kind == "rm":  # the reward model reads the exchange exactly as the scorer shows it
            return [rm_pair_example(tok, r["prompt"], r["chosen"], r["rejected"], settings.max_length, r["margin"])
                    for r in rows.to_pylist()]
        return [pair_example(tok, r["prompt"], r["chosen"], r["rejected"], settings.max_length, r["margin"],
                             cfg.model.system_prompt, cfg.model.chat_template) for r in rows.to_pylist()]

    return _job(kind, cfg, settings, base, out_dir, encode(train), encode(val), dropped)


def finetune_job(kind: str, cfg: Config, out_dir: str | Path, paths: list[str] | None = None) -> FinetuneJob:
    """The job `rlhf sft|rm|dpo` runs: from <kind>.base_model (or model.path), on <kind>.data
    (RM/DPO: plus pipeline.human_feedback) unless `paths` name the pair files."""
    settings: FinetuneConfig = getattr(cfg, kind)
    base = settings.base_model or cfg.model.path
    if kind == "sft":
        return sft_job(cfg, base, out_dir)
    sources = list(paths or []) or [p for p in [settings.data, *cfg.pipeline.human_feedback] if p]
    return pair_job(kind, cfg, base, sources, out_dir)


def _job(kind, cfg, settings, base, out_dir, train, val, heldout_dropped: int = 0) -> FinetuneJob:
    if len(val) < settings.num_workers:
        raise DataError(f"{kind}: {len(val)} validation rows for {settings.num_workers} workers; raise "
                             f"{kind}.val_fraction or add data")
    # Absolute: Ray Train's workers do not run in the driver's working directory.
    return FinetuneJob(kind=kind, base_model=resolve_model_path(base), out_dir=str(Path(out_dir).resolve()),
                       settings=settings, lora=cfg.model.lora, train=train, val=val, seed=cfg.train.seed,
                       heldout_dropped=heldout_dropped)


# ----------------------------------------------------------------------------- data pairs


def generate_pairs(cfg: Config, model: str, out_path: str | Path, questions: int | None = None) -> dict:
    """k sampled answers per question, judged with the rule rewards against the reference;
    best-vs-worst becomes a preference pair when their scores differ."""
    path = resolve_model_path(model)
    result = load_source(cfg.data.train, "prompts", cfg.data.fields, cfg.data.gym_size, cfg.data.seed)
    table, dropped = without_heldout(result.table, "question", cfg, "pairs")
    rows = table.to_pylist()[: questions or cfg.pipeline.pairs_questions]
    prompts = encode_questions(load_tokenizer(path), [r["question"] for r in rows], cfg)
    params = {"n": cfg.pipeline.pairs_k, "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
              "max_tokens": cfg.rollout.max_new_tokens}  # engine seed; see actors/rollout.py
    with OfflineEngine(path, inference_config(cfg)) as engine:
        samples = engine.sample(prompts, params, use_tqdm=True)
    pairs, probed = [], []
    for row, out in zip(rows, samples):
        answers = [s.text.strip() for s in out]
        scores = [combine(a, row.get("reference"), cfg.reward.rules, prompt=row["question"])[0] for a in answers]
        probed.append({**row, **probe_scores(answers, scores)})
        best, worst = max(range(len(answers)), key=scores.__getitem__), min(range(len(answers)), key=scores.__getitem__)
        if scores[best] > scores[worst] and answers[best] != answers[worst]:
            pairs.append({"prompt": row["question"], "chosen": answers[best], "rejected": answers[worst],
                          "margin": float(scores[best] - scores[worst])})
    if not pairs:
        raise DataError(f"none of {len(rows)} questions produced answers that the rules could tell apart")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(pa.Table.from_pylist(pairs, schema=PAIRS_SCHEMA), out)
    save(pa.Table.from_pylist(probed), probe_path(out))
    return {"questions": len(rows), "pairs": len(pairs), "file": str(out), "heldout_dropped": dropped,
            "heldout_overlap": 0}


def probe_path(pairs_path: str | Path) -> Path:
    """Where `generate_pairs` keeps every question it sampled, with its mean rule score and its
    most frequent answer's (rlhf/rl/curriculum.py): `<pairs file>.probe.parquet`."""
    path = Path(pairs_path)
    return path.with_name(f"{path.stem}.probe.parquet")
