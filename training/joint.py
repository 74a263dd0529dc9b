"""Several routing datasets as one: the union of their models, a cell masked where a set did not
observe that model. The pretrained `irt` policy learns prompt difficulty and skills across all of
them (docs/learned-policies.md, "Zero-shot routing").

`ALIASES` names one model that two sets call differently (RouteLLM's Mixtral is RouterBench's
mixtral-8x7b-chat, both the instruct model); `meta["task"]` tags each prompt with its benchmark, so
public benchmark numbers (MMLU, GSM8K, ...) can be matched to prompts of that task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.dataset import LoadReport, RoutingDataset

ALIASES = {"mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-chat"}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def task_of(ds: RoutingDataset, default: str) -> list[str]:
    """Each prompt's benchmark: RouterDC's `task`, RouterBench's `eval_name`, else `default`."""
    for key in ("task", "eval_name"):
        if key in ds.meta:
            return [str(t or default).replace("-", "_") for t in ds.meta[key]]
    return [default] * len(ds)


def concat(
    parts: Sequence[tuple[RoutingDataset, str]], aliases: dict[str, str] | None = None
) -> RoutingDataset:
    """One dataset of `parts` ((dataset, task name when the data names none)); quality and cost
    cells a part does not have are masked / NaN."""
    aliases = ALIASES if aliases is None else aliases
    models: list[str] = []
    for ds, _ in parts:
        models.extend(aliases.get(m, m) for m in ds.models if aliases.get(m, m) not in models)
    n = sum(len(ds) for ds, _ in parts)
    Q = np.full((n, len(models)), np.nan)
    C = np.full((n, len(models)), np.nan)
    texts: list[str] = []
    ids: list[str] = []
    tasks: list[str] = []
    sources: list[str] = []
    rep = LoadReport(source=" + ".join(ds.report.source or t for ds, t in parts))
    row = 0
    for ds, task in parts:
        cols = [models.index(aliases.get(m, m)) for m in ds.models]
        rows = slice(row, row + len(ds))
        Q[rows, cols] = np.where(ds.mask, ds.quality, np.nan)
        if ds.cost is not None:
            C[rows, cols] = ds.cost
        texts += ds.texts
        ids += [f"{task}:{i}" for i in ds.prompt_ids]
        tasks += task_of(ds, task)
        sources += [ds.report.source or task] * len(ds)
        rep.rows_read += ds.report.rows_read
        row += len(ds)
    mask = np.isfinite(Q)
    rep.rows_kept = n
    rep.cells_masked = int((~mask).sum())
    return RoutingDataset(
        texts=texts,
        models=models,
        quality=Q,
        mask=mask,
        cost=C if np.isfinite(C).any() else None,
        prompt_ids=ids,
        meta={"task": tasks, "source": sources},
        report=rep,
    )


def sample(ds: RoutingDataset, limit: int | None, seed: int = 0) -> RoutingDataset:
    """At most `limit` rows of `ds`, drawn at random (seeded), in their original order."""
    if limit is None or len(ds) <= limit:
        return ds
    return ds.subset(np.sort(np.random.default_rng(seed).permutation(len(ds))[:limit]))


def shared_sets(
    root: Path = SHARED,
    split: str = "train",
    routerbench: bool = True,
    routerdc: bool = True,
    routellm: bool = True,
    per_file: int | None = None,
    routellm_mmlu: int | None = 3000,
):
    """The shared sets' parts for `concat`: RouterBench and RouterDC's `split` files (each at most
    `per_file` rows), RouteLLM's GSM8K and `routellm_mmlu` of its MMLU prompts (RouteLLM has no
    split: `split="test"` leaves it out). Subsets are seeded, so embeddings cache across runs."""
    from training.jobs import load

    parts = []
    if routerbench:
        ds = load(root / "routerbench" / f"arc_challenge_{split}.csv", "routerbench")
        parts.append((sample(ds, per_file), "arc_challenge"))
    if routerdc:
        for f in sorted((root / "routerdc_7model").glob(f"*{split}.json")):
            parts.append((sample(load(f, "routerdc"), per_file), f.stem.replace("-", "_").rsplit("_", 1)[0]))
    if routellm and split == "train":
        parts.append((sample(load(root / "routellm" / "mmlu", "routellm"), routellm_mmlu), "mmlu"))
        parts.append((load(root / "routellm" / "gsm8k", "routellm"), "gsm8k"))
    return parts
