"""Generated QA from reasoning-gym: `gym:<task>?option=value&...` sources with their answers."""

from __future__ import annotations

from functools import lru_cache

from rlhf.data.readers import DataError


def parse_gym_task(task: str) -> tuple[str, dict]:
    """`chain_sum?min_terms=2&max_digits=2` -> ("chain_sum", {"min_terms": 2, "max_digits": 2})."""
    import yaml

    name, _, query = task.partition("?")
    options = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise DataError(f"reasoning-gym task '{task}': option '{part}' must look like key=value")
        options[key] = yaml.safe_load(value)
    return name, options


@lru_cache(maxsize=32)
def _gym_dataset(task: str, size: int, seed: int):
    import reasoning_gym  # optional dependency; only `gym:` sources need it

    name, options = parse_gym_task(task)
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed, **options)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"reasoning-gym task '{task}': {exc}") from None


def gym_entries(task: str, size: int, seed: int) -> list[dict]:
    """`size` generated questions of a reasoning-gym task as {question, reference} rows."""
    return [{"question": e["question"], "reference": str(e["answer"])} for e in _gym_dataset(task, size, seed)]


def gym_score(task: str, answer: str | None, entry: dict) -> float:
    """reasoning-gym's own scorer for `answer`; `entry` is the generated item (question,
    answer, metadata) or a prompts row ({question, reference})."""
    if "answer" not in entry:
        entry = {"question": entry.get("question", ""), "answer": entry.get("reference")}
    entry = {"metadata": {}, **entry}
    return float(_gym_dataset(task, 1, 0).score_answer(answer, entry))
