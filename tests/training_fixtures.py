"""Tiny routing data with a planted pattern, written by the tests themselves.

Three topics, three models named like the test gateway's pool: code prompts are answered well
only by `coder`, cooking prompts only by `cheap`, history prompts only by `big`. Costs follow
the pool's prices (cheap < coder < big)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from training.dataset import RoutingDataset

MODELS = ["cheap", "coder", "big"]
COST = {"cheap": 0.0001, "coder": 0.001, "big": 0.01}
TOPICS = {
    "code": (
        "coder",
        [
            "Write a Python function that {x}.",
            "Fix the bug in my JavaScript code that {x}.",
            "Implement in Rust a routine that {x}.",
            "Show me a SQL query that {x}.",
        ],
        [
            "reverses a linked list",
            "parses a CSV file",
            "sorts an array with quicksort",
            "counts words in a string",
            "merges two sorted lists",
            "computes a binary search",
            "validates an email address",
            "reads JSON from disk",
            "removes duplicate rows",
            "finds the longest substring",
        ],
    ),
    "cooking": (
        "cheap",
        [
            "How long should I bake {x}?",
            "Give me a simple recipe for {x}.",
            "What spices go well with {x}?",
            "How do I store leftover {x}?",
        ],
        [
            "banana bread",
            "roast chicken",
            "lentil soup",
            "chocolate cookies",
            "vegetable lasagna",
            "apple pie",
            "grilled salmon",
            "pumpkin risotto",
            "beef stew",
            "blueberry muffins",
        ],
    ),
    "history": (
        "big",
        [
            "What caused {x}?",
            "Explain the consequences of {x}.",
            "Who were the main figures of {x}?",
            "Summarise the historiography of {x}.",
        ],
        [
            "the fall of the Roman Empire",
            "the French Revolution",
            "the Thirty Years' War",
            "the collapse of the Bronze Age",
            "the Meiji Restoration",
            "the Congress of Vienna",
            "the partition of India",
            "the Hundred Years' War",
            "the Protestant Reformation",
            "the Byzantine iconoclasm",
        ],
    ),
}


# prompts none of the templates above produce, with the model the pattern sends them to
HELD_OUT = [
    ("Write a Python function that flattens a nested list.", "coder"),
    ("Show me a SQL query that joins two tables on a key.", "coder"),
    ("Give me a simple recipe for carrot cake.", "cheap"),
    ("What spices go well with mushroom soup?", "cheap"),
    ("What caused the American Civil War?", "big"),
    ("Who were the main figures of the Glorious Revolution?", "big"),
]


def planted(seed: int = 0) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(texts, topics, quality (n, 3), cost (n, 3)): the pattern, with a little label noise."""
    rng = np.random.default_rng(seed)
    texts, topics, Q, C = [], [], [], []
    for topic, (winner, templates, fills) in TOPICS.items():
        for t in templates:
            for x in fills:
                texts.append(t.format(x=x))
                topics.append(topic)
                q = [1.0 if m == winner else 0.0 for m in MODELS]
                if rng.random() < 0.05:  # noise: one wrong label in twenty
                    j = rng.integers(3)
                    q[j] = 1.0 - q[j]
                Q.append(q)
                tokens = len(texts[-1]) / 4
                C.append([COST[m] * (1 + tokens / 100) for m in MODELS])
    return texts, topics, np.array(Q), np.array(C)


def planted_dataset(seed: int = 0) -> RoutingDataset:
    texts, topics, Q, C = planted(seed)
    return RoutingDataset(
        texts=texts,
        models=list(MODELS),
        quality=Q,
        mask=np.ones_like(Q, bool),
        cost=C,
        meta={"topic": topics},
    )


def write_routerbench(path: Path, texts, Q, C, responses=None, blank=()) -> Path:
    """A RouterBench-style wide CSV. `blank`: (row, model) cells written empty."""
    cols = ["sample_id", "prompt", "eval_name"]
    for m in MODELS:
        cols += [m, f"{m}|model_response", f"{m}|total_cost"]
    cols.append("oracle_model_to_route_to")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, t in enumerate(texts):
            row = [f"s.{i}", repr([t]), "planted"]
            for j, m in enumerate(MODELS):
                q = "" if (i, m) in blank else Q[i, j]
                resp = responses[i][j] if responses else f"{m} answer"
                row += [q, resp, C[i, j]]
            row.append("")
            w.writerow(row)
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
