"""Replay simulation: bandits routing a stream of real prompts, seeing only the chosen model's score.

    python bench/replay.py [--data ../shared/data] [--seeds 5] [--cost-weight 0.2]
                           [--json bench/results/replay.json] [--plot docs/img/replay.png]

RouterBench ARC-Challenge (11 models, real per-call costs): the train split then the test split,
each shuffled per seed, is one stream of prompts (those with every model's score known, so regret
is exact). At each prompt a policy picks a model through the gateway's decision function, with
each model's cost on that prompt as the known cost; only the chosen model's score is revealed
and fed back. The reward is the decision score itself,
    r = (1 - w) * quality - w * cost / (the prompt's most expensive model's cost),  w = cost weight.

Reported per policy (mean over seeds): cumulative regret against the best fixed model in
hindsight and against the oracle (the best model per prompt), and the mean reward on the test
part of the stream beside the offline learned policy `mlp` trained with full information on the
train split (it never learns online).
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

from policies.bandit import LinUCBPolicy, ThompsonPolicy  # noqa: E402
from policies.base import ModelInfo, PromptBatch  # noqa: E402
from policies.decision import choose  # noqa: E402
from policies.encoders import PromptEncoder  # noqa: E402
from policies.learned import tail  # noqa: E402
from training.embed_cache import EmbeddingCache  # noqa: E402
from training.evaluate import predict  # noqa: E402
from training.jobs import load, train  # noqa: E402
from training.ope import estimate, reward_model  # noqa: E402


def complete(ds):
    """The prompts with every model's score and cost known (so regret is exact)."""
    return ds.subset(ds.complete)


def rewards(quality: np.ndarray, cost: np.ndarray, w: float) -> np.ndarray:
    return (1 - w) * quality - w * cost / cost.max(axis=1, keepdims=True)


def run_bandit(policy, X, Q, C, w: float) -> tuple[np.ndarray, np.ndarray]:
    """The arm chosen at each step of the stream, learning from the revealed score only, and the
    probability it had (the propensity the gateway logs)."""
    k = Q.shape[1]
    arms = np.empty(len(Q), dtype=int)
    props = np.empty(len(Q))
    everyone = np.ones(k, dtype=bool)
    for t in range(len(Q)):
        batch = PromptBatch([""], embeddings=X[t : t + 1])
        probs = policy.action_probabilities(batch, C[t], everyone, w)
        arms[t] = policy.sample_arm(probs)
        props[t] = probs[arms[t]]
        policy.observe(batch, policy.models_[arms[t]], float(Q[t, arms[t]]))
    return arms, props


def off_policy(X, Q, arms, props, targets: dict[str, np.ndarray]) -> dict[str, dict]:
    """Estimate each target's mean quality from the bandit's log (one revealed score per prompt)
    and compare with its true value, known here from the full table."""
    rows = np.arange(len(Q))
    r = Q[rows, arms]
    q_hat = reward_model(X, arms, r, Q.shape[1])
    out = {}
    for name, pi in targets.items():
        est = {k: e.as_dict() for k, e in estimate(r, arms, props, pi, q_hat).items()}
        est.setdefault(
            "snips", {"value": float("nan"), "low": float("nan"), "high": float("nan")}
        )  # no support
        out[name] = {"truth": float((pi * Q).sum(axis=1).mean())} | est
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cost-weight", type=float, default=0.2)
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/replay.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs/img/replay.png")
    args = ap.parse_args()
    w = args.cost_weight

    tr = load(args.data / "routerbench/arc_challenge_train.csv", "routerbench")
    te = load(args.data / "routerbench/arc_challenge_test.csv", "routerbench")
    enc = PromptEncoder()
    cache = EmbeddingCache(enc)
    s_tr, s_te = complete(tr), complete(te)
    q_tr, c_tr, q_te, c_te = s_tr.quality, s_tr.cost, s_te.quality, s_te.cost
    x_tr = cache.encode([tail(t, 400) for t in s_tr.texts])
    x_te = cache.encode([tail(t, 400) for t in s_te.texts])
    models = list(tr.models)
    catalog = [ModelInfo(m, quality={"default": 0.5}) for m in models]  # cold start: no prior knowledge

    # offline reference: full-information mlp trained on the train split, scored on the test part
    mlp = train("mlp", tr, enc, {"calib_folds": 3})
    mlp_arms = choose(predict(mlp, s_te, None).quality, c_te, w)
    r_te = rewards(q_te, c_te, w)
    offline = {
        "mlp (offline, full information)": float(r_te[np.arange(len(r_te)), mlp_arms].mean()),
        "best fixed model on test": float(r_te.mean(axis=0).max()),
        "oracle on test": float(r_te.max(axis=1).mean()),
    }

    policies = {
        "uniform random": None,
        "linucb": lambda s: LinUCBPolicy(seed=s).fit(catalog),
        "thompson": lambda s: ThompsonPolicy(seed=s).fit(catalog),
    }
    curves: dict[str, list[np.ndarray]] = {n: [] for n in policies}
    curves_oracle: dict[str, list[np.ndarray]] = {n: [] for n in policies}
    test_reward: dict[str, list[float]] = {n: [] for n in policies}
    seconds: dict[str, float] = dict.fromkeys(policies, 0.0)
    ope_runs: list[dict[str, dict]] = []
    k = len(models)
    fixed_te = int(r_te.mean(axis=0).argmax())
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        o_tr, o_te = rng.permutation(len(q_tr)), rng.permutation(len(q_te))
        X = np.vstack([x_tr[o_tr], x_te[o_te]])
        Q = np.vstack([q_tr[o_tr], q_te[o_te]])
        C = np.vstack([c_tr[o_tr], c_te[o_te]])
        R = rewards(Q, C, w)
        best_fixed = R.sum(axis=0).argmax()
        for name, make in policies.items():
            t0 = time.perf_counter()
            if make is None:
                got = R.mean(axis=1)  # expected reward of a uniform choice
            else:
                arms, props = run_bandit(make(seed), X, Q, C, w)
                got = R[np.arange(len(R)), arms]
                if name == "thompson":  # its log of the test part, evaluated off-policy
                    part = slice(len(q_tr), None)
                    targets = {
                        "mlp (offline)": np.eye(k)[mlp_arms[o_te]],
                        f"always {models[fixed_te]}": np.eye(k)[np.full(len(o_te), fixed_te)],
                        "always gpt-4-1106-preview": np.eye(k)[
                            np.full(len(o_te), models.index("gpt-4-1106-preview"))
                        ],
                        "uniform random": np.full((len(o_te), k), 1.0 / k),
                    }
                    ope_runs.append(off_policy(X[part], Q[part], arms[part], props[part], targets))
            seconds[name] += time.perf_counter() - t0
            curves[name].append(np.cumsum(R[:, best_fixed] - got))
            curves_oracle[name].append(np.cumsum(R.max(axis=1) - got))
            test_reward[name].append(float(got[len(q_tr) :].mean()))
        print(f"seed {seed} done", file=sys.stderr, flush=True)

    n = len(q_tr) + len(q_te)
    result = {
        "data": "routerbench arc_challenge train+test (prompts with every score known)",
        "stream_length": n,
        "train_part": len(q_tr),
        "cost_weight": w,
        "seeds": args.seeds,
        "policies": {
            name: {
                "regret_vs_best_fixed": float(np.mean([c[-1] for c in curves[name]])),
                "regret_vs_best_fixed_sd": float(np.std([c[-1] for c in curves[name]])),
                "regret_vs_oracle": float(np.mean([c[-1] for c in curves_oracle[name]])),
                "regret_vs_best_fixed_first_half": float(np.mean([c[n // 2 - 1] for c in curves[name]])),
                "mean_reward_test_part": float(np.mean(test_reward[name])),
                "seconds_per_run": seconds[name] / args.seeds,
            }
            for name in policies
        },
        "offline_reference": offline,
        "off_policy_evaluation": {
            "log": "thompson's choices on the test part of each stream (one revealed score each)",
            "value": "mean quality of the target's choices",
            "targets": {
                t: {
                    "truth": float(np.mean([run[t]["truth"] for run in ope_runs])),
                    **{
                        e: {
                            "estimate": float(np.mean([run[t][e]["value"] for run in ope_runs])),
                            "mean_ci_width": float(
                                np.mean([run[t][e]["high"] - run[t][e]["low"] for run in ope_runs])
                            ),
                            "covered": int(
                                sum(
                                    run[t][e]["low"] <= run[t]["truth"] <= run[t][e]["high"]
                                    for run in ope_runs
                                )
                            ),
                        }
                        for e in ("ips", "snips", "dm", "dr")
                    },
                }
                for t in (ope_runs[0] if ope_runs else {})
            },
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name in policies:
        ax[0].plot(np.mean(curves[name], axis=0), label=name)
        ax[1].plot(np.mean(curves_oracle[name], axis=0), label=name)
    for a, title in zip(ax, ("regret vs best fixed model", "regret vs oracle"), strict=True):
        a.axvline(len(q_tr), color="grey", ls=":", lw=1)
        a.set_xlabel("prompts in the stream (dotted: test split starts)")
        a.set_ylabel("cumulative regret")
        a.set_title(f"{title} (w = {w:g}, mean of {args.seeds} seeds)")
        a.legend()
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)

    print("| policy | regret vs best fixed (sd) | regret vs oracle | mean reward, test part | s/run |")
    print("|---|---|---|---|---|")
    for name, r in result["policies"].items():
        print(
            f"| {name} | {r['regret_vs_best_fixed']:.1f} ({r['regret_vs_best_fixed_sd']:.1f}) "
            f"| {r['regret_vs_oracle']:.1f} | {r['mean_reward_test_part']:.4f} | {r['seconds_per_run']:.1f} |"
        )
    for name, v in offline.items():
        print(f"| {name} | - | - | {v:.4f} | |")
    print()
    print("| target (mean quality) | truth | IPS | SNIPS | DM | DR | covered (IPS/SNIPS/DR of seeds) |")
    print("|---|---|---|---|---|---|---|")
    for t, d in result["off_policy_evaluation"]["targets"].items():
        cells = " | ".join(
            f"{d[e]['estimate']:.4f} ± {d[e]['mean_ci_width'] / 2:.4f}" for e in ("ips", "snips", "dm", "dr")
        )
        cov = "/".join(str(d[e]["covered"]) for e in ("ips", "snips", "dr"))
        print(f"| {t} | {d['truth']:.4f} | {cells} | {cov} of {args.seeds} |")


if __name__ == "__main__":
    main()
