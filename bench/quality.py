"""Learned-policy benchmark on the shared routing data: one command, markdown tables out.

    python bench/quality.py [--data ../shared/data] [--sets arc,routerdc,mmlu,gsm8k]
                            [--policies knn,logistic,mlp,mf,bt,cluster,cascade,pg] [--json out.json]
                            [--encoder NAME] [--perturb COS --seed N]

- RouterBench ARC (11 models, real costs): train on the train split, evaluate on the test split:
  AIQ, max quality, cost at which the policy first reaches the best single model's quality.
- RouterDC 7-model sets (equal cost): one policy trained on the union of the five train splits,
  accuracy (cost weight 0) on each test split, and the mean over the five.
- RouteLLM MMLU and GSM8K (2 models, contaminated prompts removed): seeded 5-fold by prompt; the
  out-of-fold predictions of all prompts are swept together. Costs from the default price table;
  CPT is the share of calls to GPT-4 needed to recover x% of the weak-strong gap. The cascade
  (GSM8K: recorded answers) scores each fold's answers out of fold; every prompt pays the weak
  call, escalations the strong one too.

Every number comes from `training.evaluate` (the gateway's own decision function).
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

from policies.encoders import PromptEncoder  # noqa: E402
from training.dataset import RoutingDataset  # noqa: E402
from training.evaluate import Predictions, evaluate, predict, weight_grid  # noqa: E402
from training.jobs import fmt, load, run_eval, train  # noqa: E402
from training.metrics import cost_to_reach  # noqa: E402

PARAMS = {"calib_folds": 3}  # 3 calibration folds everywhere, to keep the run near 30 minutes
# routerdc holds out 1/calib_folds of the prompts (no cross-fitting): its defaults, not fewer folds
OWN_PARAMS = {"routerdc": {}}
ROUTERDC_TASKS = {
    "mmlu": ("mmlu_train.json", "mmlu_test.json"),
    "arc_challenge": ("arc_challenge_train.json", "arc_challenge_test.json"),
    "humaneval": ("humaneval_train.json", "humaneval_test.json"),
    "cmmlu": ("cmmlu_train.json", "cmmlu_test.json"),
    "gsm8k": ("gsm8k-train.json", "gsm8k-test.json"),
}


def concat(parts: list[RoutingDataset]) -> RoutingDataset:
    models = parts[0].models
    for p in parts:
        if p.models != models:
            raise ValueError("datasets to concatenate have different models")
    return RoutingDataset(
        texts=[t for p in parts for t in p.texts],
        models=list(models),
        quality=np.concatenate([p.quality for p in parts]),
        mask=np.concatenate([p.mask for p in parts]),
        prompt_ids=[i for p in parts for i in p.prompt_ids],
    )


def arc(data: Path, policies: list[str], enc, out: dict) -> str:
    tr = load(data / "routerbench/arc_challenge_train.csv", "routerbench")
    te = load(data / "routerbench/arc_challenge_test.csv", "routerbench")
    rows, res = [], {}
    for name in policies:
        t0 = time.time()
        p = train(name, tr, enc, OWN_PARAMS.get(name, PARAMS))
        r = run_eval(p, te, enc).report
        res[name] = r
        ratio = r["cost_to_best_single_quality"]["ratio"]
        rows.append(
            f"| {name} | {fmt(r['aiq'])} | {fmt(r['max_quality'])} | {fmt(ratio, 3) if ratio else 'never'} "
            f"| {time.time() - t0:.0f} |"
        )
        print(f"arc {name}: AIQ {fmt(r['aiq'])}", file=sys.stderr, flush=True)
    r = next(iter(res.values()))
    best = r["best_single"]["model"]
    for m, s in sorted(r["single_models"].items(), key=lambda kv: kv[1]["cost_usd"]):
        rows.append(
            f"| single: {m}{' (best)' if m == best else ''} | - | {fmt(s['quality'])} | ${s['cost_usd']:.6f} per prompt | |"
        )
    rows.append(
        f"| oracle | - | {fmt(r['oracle']['quality'])} | ${r['oracle']['cost_usd']:.6f} per prompt | |"
    )
    rows.append(f"| all single models (AIQ of their hull) | {fmt(r['aiq_single_models'])} | | | |")
    out["routerbench_arc"] = res
    head = (
        f"### RouterBench ARC-Challenge (train {len(tr)}, test {len(te)} prompts, "
        f"{r['scored_prompts']} with every cell known)\n\n"
        "| policy | AIQ | max quality | cost to reach best single's quality (x its cost) | seconds |\n"
        "|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows)


def routerdc(data: Path, policies: list[str], enc, out: dict) -> str:
    d = data / "routerdc_7model"
    trains = {t: load(d / a, "routerdc") for t, (a, _) in ROUTERDC_TASKS.items()}
    tests = {t: load(d / b, "routerdc") for t, (_, b) in ROUTERDC_TASKS.items()}
    models = trains["mmlu"].models
    tr = concat([trains[t].select_models(models) for t in ROUTERDC_TASKS])
    acc = {}
    for name in policies:
        if name == "cascade":
            continue  # no answers in RouterDC data
        p = train(name, tr, enc, OWN_PARAMS.get(name, PARAMS))
        acc[name] = {}
        for t, te in tests.items():
            te = te.select_models(models)
            ev = run_eval(p, te, enc, points=21)
            acc[name][t] = ev.report["sweep"][0]["quality"]  # cost weight 0: all costs equal
        print(f"routerdc {name}: {np.mean(list(acc[name].values())):.4f}", file=sys.stderr, flush=True)
    single = {
        m: {t: float(np.nanmean(tests[t].select_models(models).quality[:, j])) for t in tests}
        for j, m in enumerate(models)
    }
    oracle = {t: float(np.nanmax(tests[t].select_models(models).quality, axis=1).mean()) for t in tests}
    best = max(single, key=lambda m: np.mean(list(single[m].values())))
    tasks = list(ROUTERDC_TASKS)
    lines = [
        f"### RouterDC 7-model sets (one policy trained on the five train splits, {len(tr)} prompts; accuracy per test split)\n",
        "| policy | " + " | ".join(tasks) + " | mean |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]

    def row(label, d):
        return (
            f"| {label} | "
            + " | ".join(f"{d[t]:.4f}" for t in tasks)
            + f" | **{np.mean([d[t] for t in tasks]):.4f}** |"
        )

    for name, a in acc.items():
        lines.append(row(name, a))
    lines.append(row(f"best fixed model: {best}", single[best]))
    lines.append(row("oracle", oracle))
    out["routerdc"] = {"policies": acc, "single_models": single, "oracle": oracle, "best_fixed": best}
    return "\n".join(lines)


def kfold_predictions(name: str, ds: RoutingDataset, enc, k: int = 5, params=None) -> Predictions:
    q = np.full((len(ds), ds.n_models), np.nan)
    c = np.full((len(ds), ds.n_models), np.nan)
    for tr_idx, te_idx in ds.kfold(k, seed=0):
        tr, te = ds.subset(tr_idx), ds.subset(te_idx)
        p = train(name, tr, enc, params)
        from training.embed_cache import embed_for

        pred = predict(p, te, embed_for(p, te.texts, enc))
        q[te_idx], c[te_idx] = pred.quality, pred.cost
    return Predictions(q, c)


def kfold_cascade(ds: RoutingDataset, enc, k: int = 5, params=None, points: int = 201):
    """The cascade's out-of-fold answer scores of every prompt, swept together (with two models
    every fold's plan is the same: the weak model first, the strong one on escalation)."""
    from training.cascade import cascade_scores, sweep_cascade

    s, plans = np.zeros(len(ds)), set()
    for tr_idx, te_idx in ds.kfold(k, seed=0):
        p = train("cascade", ds.subset(tr_idx), enc, params)
        s[te_idx] = cascade_scores(p, ds.subset(te_idx))
        plans.add((p.first_, p.escalate_to_, p.second_))
    if len(plans) > 1:
        raise ValueError(f"the folds chose different cascade plans: {plans}")
    return sweep_cascade(ds, s, *plans.pop(), points=points)


def routellm(data: Path, which: str, policies: list[str], enc, out: dict) -> str:
    path = data / "routellm" / ("mmlu" if which == "mmlu" else "gsm8k/gsm8k_responses.csv")
    ds = load(path, "routellm")
    res = {}
    lines = [
        f"### RouteLLM {which.upper()} ({len(ds)} prompts after removing {ds.report.dropped.get('contaminated prompt', 0)} "
        "contaminated; 5-fold by prompt)\n",
        "| policy | APGR | CPT(50%) | CPT(80%) | CPT(95%) | GPT-4 calls for 95% of GPT-4's accuracy "
        "| $ per prompt there (both calls of a cascade) | max quality |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in policies:
        if name == "cascade" and not ds.responses:
            continue
        t0 = time.time()
        if name == "cascade":  # two steps: every prompt pays the weak call, escalations the strong
            ev = kfold_cascade(ds, enc, params=PARAMS)
        else:
            ev = evaluate(ds, kfold_predictions(name, ds, enc, params=PARAMS), weight_grid(201))
        r = ev.report
        t = r["two_model"]
        res[name] = r
        cpt = t["cpt_strong_share"]
        usd = cost_to_reach(ev.points, 0.95 * r["single_models"][t["strong"]]["quality"])
        lines.append(
            f"| {name} | {fmt(t['apgr'])} | {fmt(cpt['50%'], 3)} | {fmt(cpt['80%'], 3)} | {fmt(cpt['95%'], 3)} "
            f"| {fmt(t['strong_share_for_95pct_of_strong_quality'], 3)} | {fmt(usd, 3)} | {fmt(r['max_quality'])} |"
        )
        print(
            f"{which} {name}: CPT95 {fmt(cpt['95%'], 3)} ({time.time() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    r = next(iter(res.values()))
    t = r["two_model"]
    qs, qw = r["single_models"][t["strong"]]["quality"], r["single_models"][t["weak"]]["quality"]
    rnd = (0.95 * qs - qw) / (qs - qw)
    lines.append(f"| random (expected) | 0.5000 | 0.500 | 0.800 | 0.950 | {rnd:.3f} | | |")
    for m, s in r["single_models"].items():
        lines.append(f"| single: {m} | | | | | | {fmt(s['cost_usd'], 3)} | {fmt(s['quality'])} |")
    lines.append(f"| oracle | | | | | | | {fmt(r['oracle']['quality'])} |")
    out[f"routellm_{which}"] = res
    return "\n".join(lines)


class Perturbed:
    """`encoder`'s vectors each moved to cosine `cos` from itself, in a random direction fixed by
    the prompt and `seed`: what an encoder that far from this one does to routing quality by
    chance alone — the noise floor a comparison of encoders must clear (`--perturb`)."""

    def __init__(self, encoder: PromptEncoder, cos: float, seed: int):
        from training.embed_cache import EmbeddingCache

        if not 0 < cos <= 1:
            raise SystemExit(f"--perturb takes a cosine in (0, 1], not {cos}")
        self.encoder, self.cos, self.seed = encoder, cos, seed
        self.base = EmbeddingCache(encoder)  # the unperturbed vectors, from the disk cache
        self.name, self.build = encoder.name, encoder.build
        self.version = f"{encoder.version}+perturb{cos}s{seed}"  # its own embedding cache

    def __getattr__(self, name: str):
        return getattr(self.encoder, name)

    def encode(self, texts, **_) -> np.ndarray:
        import hashlib

        v = self.base.encode(list(texts)).astype(np.float32)
        out = np.empty_like(v)
        for i, t in enumerate(texts):
            digest = int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little")
            u = np.random.default_rng([self.seed, digest]).standard_normal(v.shape[1]).astype(np.float32)
            u -= (u @ v[i]) * v[i]  # orthogonal to the vector: the cosine is exactly `cos`
            u /= np.linalg.norm(u)
            out[i] = self.cos * v[i] + np.sqrt(1 - self.cos**2) * u
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--sets", default="arc,routerdc,mmlu,gsm8k")
    ap.add_argument("--policies", default="knn,logistic,mlp,mf,bt,cluster,cascade,pg")
    ap.add_argument(
        "--encoder", default=None, help="prompt encoder (default: the bundled MiniLM through ONNX)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write every report here")
    ap.add_argument(
        "--perturb",
        type=float,
        default=None,
        metavar="COS",
        help="move every vector to this cosine from itself, randomly (a noise floor; with --seed)",
    )
    ap.add_argument("--seed", type=int, default=0, help="--perturb's random directions")
    a = ap.parse_args()
    enc = PromptEncoder(a.encoder) if a.encoder else PromptEncoder()
    if a.perturb is not None:
        enc = Perturbed(enc, a.perturb, a.seed)
    policies = [p for p in a.policies.split(",") if p]
    out: dict = {"encoder": {"name": enc.name, "version": enc.version, "build": enc.build}}
    t0 = time.time()
    print(f"Encoder: {enc.name} {enc.version} ({enc.build}).\n", flush=True)
    for s in a.sets.split(","):
        if s == "arc":
            section = arc(a.data, policies, enc, out)
        elif s == "routerdc":
            section = routerdc(a.data, policies, enc, out)
        elif s in ("mmlu", "gsm8k"):
            section = routellm(a.data, s, policies, enc, out)
        else:
            raise SystemExit(f"unknown set {s!r}")
        print(section + "\n", flush=True)
    print(f"Total time {time.time() - t0:.0f} s on this machine (2 CPU cores).")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
