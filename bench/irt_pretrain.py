"""Fit the wheel's pretrained `irt` artifact (policies/pretrained/irt) on every shared set at once.

    python -m bench.irt_pretrain [--out DIR] [--routellm-mmlu 3000] [--param k=v ...]

Training data: RouterBench's ARC train split (11 models), RouterDC's five train files (7 models),
RouteLLM's GSM8K and a seeded 3,000 of its MMLU prompts (GPT-4 and Mixtral; RouteLLM's Mixtral
is RouterBench's mixtral-8x7b-chat, `training.joint.ALIASES`): 18 models. The calibration items
(policies/pretrained/calibration.jsonl) are left out. Embeddings come from the disk cache
(`training.embed_cache`), so a rerun embeds nothing new.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from policies.calibration import load_items
from policies.encoders import PromptEncoder
from policies.irt import IRTPolicy, shipped_artifact
from training.embed_cache import embed_for
from training.joint import concat, shared_sets


def training_data(routellm_mmlu: int = 3000, **kw):
    ds = concat(shared_sets(split="train", routellm_mmlu=routellm_mmlu, **kw))
    held = {it.prompt for it in load_items()}
    keep = [i for i, t in enumerate(ds.texts) if t not in held]
    return ds.subset(keep), len(ds) - len(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=shipped_artifact())
    ap.add_argument("--routellm-mmlu", type=int, default=3000)
    ap.add_argument("--param", action="append", default=[], help="IRTPolicy hyper-parameter k=v")
    a = ap.parse_args()
    from policies.artifacts import save_policy

    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in a.param)}
    enc = PromptEncoder()
    ds, held = training_data(a.routellm_mmlu)
    print(
        f"{len(ds)} prompts x {len(ds.models)} models ({int(ds.mask.sum())} labels); {held} calibration prompts left out"
    )
    policy = IRTPolicy(encoder=enc, **params)
    X = embed_for(policy, ds.texts, enc, progress=True)
    t = time.perf_counter()
    policy.fit(ds, embeddings=X)
    policy.metrics_["fit_seconds"] = round(time.perf_counter() - t, 1)
    save_policy(policy, a.out, encoder=enc, metrics=policy.metrics_, data=ds.describe())
    print(f"fitted in {policy.metrics_['fit_seconds']} s; wrote {a.out}")


if __name__ == "__main__":
    main()
