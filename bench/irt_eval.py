"""How well the `irt` policy routes models it was not trained on (docs/benchmarks.md, "Zero-shot").

    python -m bench.irt_eval lomo [--models a,b] [--k 25,50,100,200] [--seeds 3]
    python -m bench.irt_eval crossset [--k 25,50,100,200] [--seeds 3]
    python -m bench.irt_eval pertask --k 100,200 --seeds 10

- `lomo`: leave one model out on RouterBench. For each model M: fit irt on every shared training set
  with all of M's labels masked, calibrate M from K of its RouterBench *train* prompts (seeded draws),
  route RouterBench's test split among all 11 models. Against (a) irt fitted with M's labels, (b) the
  category policy with each model's train-set accuracy as its prior (what an operator could write at
  best; M gets the others' mean, as a model nobody measured), (c) the single-model hull.
- `crossset`: fit irt on RouterBench + RouteLLM only (RouterDC's 7 models and its CMMLU / HumanEval
  tasks unseen), calibrate each RouterDC model from K of its train prompts, route RouterDC's test
  files (500 per file at most, seeded) among the 7; all cost the same, so accuracy at cost weight 0
  against the best fixed model, and irt fitted on RouterDC's train labels.
- `pertask`: how far calibration from K items can go on the cross-set task when the items' task is
  known (the items of a calibration set carry their benchmark). Paired draws (the same K items for
  every model and rule), random or stratified by task: the default (kNN correction), the ability
  alone, per-(model, task) logit offsets, each model's own accuracy per task; the task of a test
  prompt from a classifier fitted on the K items' embeddings and labels, or (a ceiling serving
  does not have) the test prompt's true task.

Embeddings come from the disk cache (`training.embed_cache`). Results: bench/results/irt_<cmd>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.irt_pretrain import training_data
from policies.base import ModelInfo
from policies.category import CategoryPolicy
from policies.encoders import PromptEncoder
from policies.irt import IRTPolicy
from policies.learned import fit_linear_nonneg
from training.embed_cache import embed_for
from training.evaluate import evaluate, predict, weight_grid
from training.joint import concat, shared_sets

RESULTS = Path(__file__).resolve().parent / "results"


def _embed(enc, ds, view) -> np.ndarray:
    return embed_for(view, ds.texts, enc)


def _report(policy, ds, X) -> dict:
    r = evaluate(ds, predict(policy, ds, X), weight_grid(61)).report
    return {
        "aiq": r["aiq"],
        "aiq_single_models": r["aiq_single_models"],
        "max_quality": r["max_quality"],
        "accuracy_at_w0": r["sweep"][0]["quality"],
        "best_single": r["best_single"],
        "cost_at_best_single_quality": r["cost_to_best_single_quality"],
    }


def _calibrate(policy, model, pool, Xpool, k, seed):
    """Fit `model` from k random prompts of `pool` (a dataset) where it is labelled."""
    j = pool.models.index(model)
    rows = np.flatnonzero(pool.mask[:, j])
    rows = np.random.default_rng(seed).permutation(rows)[:k]
    a, b, r = policy.fit_model(Xpool[rows], pool.quality[rows, j])
    cost = None
    if pool.cost is not None and np.isfinite(pool.cost[rows, j]).all():
        cost = np.array(fit_linear_nonneg(pool.tokens()[rows], pool.cost[rows, j]))
    policy.set_ability(model, a, b, "calibrated", cost_coef=cost, residual=(Xpool[rows], r))


def _masked(ds, models):
    from dataclasses import replace

    mask = ds.mask.copy()
    mask[:, [ds.models.index(m) for m in models]] = False
    return replace(ds, mask=mask)


def _category(train, test, unknown: str | None, enc, X):
    """Category priors = train-set accuracy per model (the unknown model: the others' mean)."""
    acc = {m: float(np.nanmean(train.quality[:, j])) for j, m in enumerate(train.models) if m in test.models}
    if unknown is not None:
        acc[unknown] = float(np.mean([v for m, v in acc.items() if m != unknown]))
    cost = {m: float(np.nanmean(train.cost[:, j])) for j, m in enumerate(train.models) if m in test.models}
    catalog = [ModelInfo(m, quality={"default": acc[m]}) for m in test.models]
    cat = CategoryPolicy(encoder=enc).fit(catalog)

    class Priced:  # the category policy has no cost model: each model's mean train cost
        models_ = cat.models_

        def view(self, texts):
            return texts

        def predict_quality(self, batch):
            return cat.predict_quality(batch)

        def predict_cost(self, batch):
            return np.tile([cost[m] for m in self.models_], (len(batch), 1))

        def predict_latency(self, batch):
            return None

    return _report(Priced(), test, X)


def lomo(args) -> dict:
    enc = PromptEncoder()
    view = IRTPolicy()
    train, _ = training_data()
    rb_train = shared_sets(split="train", routerdc=False, routellm=False)[0][0]
    test = shared_sets(split="test", routerdc=False, routellm=False)[0][0]
    Xtr, Xrb, Xte = _embed(enc, train, view), _embed(enc, rb_train, view), _embed(enc, test, view)
    params = json.loads(args.params)
    t0 = time.perf_counter()
    full = IRTPolicy(encoder=enc, **params).fit(train, embeddings=Xtr)
    out = {"full": _report(full, test, Xte), "fit_seconds": round(time.perf_counter() - t0, 1), "models": {}}
    print("full", out["full"]["aiq"], "hull", out["full"]["aiq_single_models"], flush=True)
    models = args.models.split(",") if args.models else list(test.models)
    for m in models:
        res = {"category": _category(rb_train, test, m, enc, Xte)}
        policy = IRTPolicy(encoder=enc, **params).fit(_masked(train, [m]), embeddings=Xtr)
        res["k0"] = _report(policy, test, Xte)
        for k in args.k:
            reps = []
            for s in range(args.seeds):
                p = _copy(policy)
                _calibrate(p, m, rb_train, Xrb, k, seed=s)
                reps.append(_report(p, test, Xte))
            res[f"k{k}"] = {
                "aiq": float(np.mean([r["aiq"] for r in reps])),
                "aiq_sd": float(np.std([r["aiq"] for r in reps])),
                "cost_ratio": _mean([r["cost_at_best_single_quality"]["ratio"] for r in reps]),
                "runs": reps,
            }
        out["models"][m] = res
        print(m, {k: round(v["aiq"], 4) for k, v in res.items()}, flush=True)
        _write("lomo" + args.tag, out)
    return out


def _crossset_data(enc):
    """(source, RouterDC train, RouterDC test) datasets and their embeddings."""
    view = IRTPolicy()
    src = concat(shared_sets(split="train", routerdc=False, routellm_mmlu=3000))
    dc_train = concat(shared_sets(split="train", routerbench=False, routellm=False))
    test = concat(shared_sets(split="test", routerbench=False, per_file=500))
    return src, dc_train, test, *(_embed(enc, d, view) for d in (src, dc_train, test))


def crossset(args) -> dict:
    enc = PromptEncoder()
    src, dc_train, test, Xsrc, Xdc, Xte = _crossset_data(enc)
    params = json.loads(args.params)
    base = IRTPolicy(encoder=enc, **params).fit(src, embeddings=Xsrc)
    full = IRTPolicy(encoder=enc, **params).fit(dc_train, embeddings=Xdc)
    out = {"full_on_routerdc": _report(full, test, Xte), "models": list(test.models), "k": {}}
    print(
        "full",
        out["full_on_routerdc"]["accuracy_at_w0"],
        "best single",
        out["full_on_routerdc"]["best_single"],
    )
    for k in args.k:
        reps = []
        for s in range(args.seeds):
            p = _copy(base)
            for m in test.models:
                _calibrate(p, m, dc_train, Xdc, k, seed=s)
            reps.append(_report(p, test, Xte))
        out["k"][k] = {
            "accuracy_at_w0": float(np.mean([r["accuracy_at_w0"] for r in reps])),
            "accuracy_sd": float(np.std([r["accuracy_at_w0"] for r in reps])),
            "runs": reps,
        }
        print(k, out["k"][k]["accuracy_at_w0"], flush=True)
    _write("crossset" + args.tag, out)
    return out


def pertask(args) -> dict:
    from sklearn.linear_model import LogisticRegression

    enc = PromptEncoder()
    src, dc, test, Xsrc, Xdc, Xte = _crossset_data(enc)
    base = IRTPolicy(encoder=enc, **json.loads(args.params)).fit(src, embeddings=Xsrc)
    models, Q = list(test.models), test.quality
    cols = [dc.models.index(m) for m in models]
    task_dc, task_te = np.array(dc.meta["task"]), np.array(test.meta["task"])
    labelled = np.flatnonzero(dc.mask[:, cols].all(1))
    s_dc, d_dc = base.prompt_side(Xdc)
    s_te, d_te = base.prompt_side(Xte)

    def accuracy(P):  # all cost the same: the predicted best model per prompt
        return float(np.mean(Q[np.arange(len(Q)), np.argmax(P, 1)]))

    out = {"best_fixed": float(np.nanmean(Q, 0).max()), "test_tasks": _counts(task_te), "k": {}}
    for k in args.k:
        for how in ("random", "stratified"):
            runs = []
            for seed in range(args.seeds):
                rows = _draw(labelled, task_dc, k, seed, stratified=how == "stratified")
                items_t = task_dc[rows]
                clf = LogisticRegression(C=10, max_iter=2000).fit(Xdc[rows], items_t)
                tasks = list(clf.classes_)
                p_task = {
                    "clf": clf.predict_proba(Xte),
                    "true": (task_te[:, None] == np.array(tasks)).astype(float),
                }
                p = _copy(base)
                P = {
                    n: np.zeros(Q.shape) for n in ("none", "offset_clf", "offset_true", "own_clf", "own_true")
                }
                for c, (m, j) in enumerate(zip(models, cols, strict=True)):
                    y = dc.quality[rows, j]
                    a, b, r = p.fit_model(Xdc[rows], y)
                    p.set_ability(m, a, b, "calibrated", residual=(Xdc[rows], r))
                    z_items, z_test = s_dc[rows] @ a + b - d_dc[rows], s_te @ a + b - d_te
                    P["none"][:, c] = 1 / (1 + np.exp(-z_test))
                    off = _task_offsets(z_items, y, items_t, tasks)
                    per_task = 1 / (1 + np.exp(-(z_test[:, None] + off)))
                    own = np.array(
                        [(y[items_t == t].sum() + 2 * y.mean()) / ((items_t == t).sum() + 2) for t in tasks]
                    )
                    for src_name, pt in p_task.items():
                        P[f"offset_{src_name}"][:, c] = (pt * per_task).sum(1)
                        P[f"own_{src_name}"][:, c] = pt @ own
                knn = p._scores(Xte)[:, [p.models_.index(m) for m in models]]
                run = {"knn": accuracy(knn), **{n: accuracy(v) for n, v in P.items()}}
                run["classifier_accuracy"] = float(
                    np.mean(np.array(tasks)[p_task["clf"].argmax(1)] == task_te)
                )
                runs.append(run)
            summary = {}
            for n in runs[0]:
                v = np.array([r[n] for r in runs])
                summary[n] = {"mean": float(v.mean()), "sd": float(v.std())}
                if n != "classifier_accuracy":  # each rule against the default on the same draws
                    gain = v - np.array([r["knn"] for r in runs])
                    summary[n]["gain_over_knn"] = float(gain.mean())
                    summary[n]["gain_se"] = float(gain.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
            out["k"][f"{k}_{how}"] = {"summary": summary, "runs": runs}
            print(k, how, {n: round(v["mean"], 4) for n, v in summary.items()}, flush=True)
            _write("pertask" + args.tag, out)
    return out


def _draw(rows, task, k, seed, stratified):
    """k of `rows` at random, or in turn from each task's shuffled rows (equal shares)."""
    rng = np.random.default_rng(seed)
    if not stratified:
        return rng.permutation(rows)[:k]
    groups = [rng.permutation(rows[task[rows] == t]) for t in np.unique(task[rows])]
    order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return np.array(order[:k])


def _task_offsets(z, y, item_task, tasks, sd: float = 1.0):
    """Per-task logit offsets of one model on top of its ability (MAP, N(0, sd^2) prior each)."""
    from scipy.optimize import minimize

    idx = np.array([tasks.index(t) for t in item_task])

    def loss(off):
        u = z + off[idx]
        nll = np.sum(np.logaddexp(0.0, u) - y * u)
        grad = np.bincount(idx, 1 / (1 + np.exp(-u)) - y, len(tasks))
        return nll + 0.5 * off @ off / sd**2, grad + off / sd**2

    return minimize(loss, np.zeros(len(tasks)), jac=True, method="L-BFGS-B").x


def _counts(xs) -> dict:
    names, n = np.unique(xs, return_counts=True)
    return {str(a): int(b) for a, b in zip(names, n, strict=True)}


def _copy(policy: IRTPolicy) -> IRTPolicy:
    """A copy whose abilities can change without touching `policy` (the prompt side is shared)."""
    import copy

    p = copy.copy(policy)
    for k in ("ability_", "bias_", "cal_a_", "cal_b_", "cost_coef_"):
        if getattr(policy, k, None) is not None:
            setattr(p, k, np.array(getattr(policy, k)))
    p.models_, p.source_ = list(policy.models_), list(policy.source_)
    return p


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _write(name: str, out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"irt_{name}.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["lomo", "crossset", "pertask"])
    ap.add_argument("--models", default="", help="lomo: comma-separated models to leave out (default all)")
    ap.add_argument("--k", default="25,50,100,200")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--params", default="{}", help="IRTPolicy hyper-parameters as JSON")
    ap.add_argument("--tag", default="", help="suffix of the results file (irt_<cmd><tag>.json)")
    args = ap.parse_args()
    args.k = [int(x) for x in args.k.split(",")]
    {"lomo": lomo, "crossset": crossset, "pertask": pertask}[args.cmd](args)


if __name__ == "__main__":
    main()
