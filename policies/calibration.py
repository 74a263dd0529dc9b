"""Calibration items: prompts with a checkable reference answer, and exact-match grading.

`moe-router calibrate` sends K of them to a model, grades each reply by exact match of the final
answer it states (`policies.answers.extract_answer`: a choice letter, or a final number) and fits
the model's `irt` ability from the grades. The wheel ships `pretrained/calibration.jsonl` (built by
`bench/irt_calibration_set.py` from the shared sets' test items; sources and licences in
docs/learned-policies.md), one JSON object a line: id, task, source, licence, prompt, answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.answers import extract_answer

MAX_ITEMS = 500


@dataclass(frozen=True)
class Item:
    id: str
    task: str
    prompt: str
    answer: str  # normalised as extract_answer normalises: "C", "1200"
    source: str = ""
    license: str = ""


def items_path() -> Path:
    return Path(__file__).resolve().parent / "pretrained" / "calibration.jsonl"


def load_items(path: str | Path | None = None) -> list[Item]:
    out = []
    for line in Path(path or items_path()).read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(Item(**{k: d[k] for k in Item.__dataclass_fields__ if k in d}))
    return out


def pick(items: list[Item], k: int, seed: int = 0) -> list[Item]:
    """K items, drawn at random (seeded) but balanced across tasks: every model sees the same K."""
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[Item]] = {}
    for it in items:
        by_task.setdefault(it.task, []).append(it)
    queues = {t: [v[i] for i in rng.permutation(len(v))] for t, v in sorted(by_task.items())}
    chosen: list[Item] = []
    while len(chosen) < k and any(queues.values()):
        for q in queues.values():
            if q and len(chosen) < k:
                chosen.append(q.pop())
    return chosen


def grade(item: Item, reply: str | None) -> float:
    """1.0 when the reply's stated final answer is the reference answer, else 0.0."""
    return 1.0 if extract_answer(reply) == item.answer else 0.0
