"""`moe-router train / eval / compare`: fit learned policies on routing data and score them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import UserError

FormatOption = typer.Option(
    None,
    "--format",
    "-f",
    help="routerbench | routerbench-pickle | routellm | routerdc | jsonl | parquet (default: from the file)",
)
AllowPickle = typer.Option(
    False,
    "--allow-pickle",
    help="allow loading a pickled DataFrame (runs code from the file: trusted files only)",
)
NoContamination = typer.Option(
    False, "--keep-contaminated", help="RouteLLM data: keep prompts listed in contaminated_prompts.jsonl"
)
PricesOption = typer.Option(
    None, "--prices", help="price table (JSON/YAML: model -> {input, output} USD per 1M tokens)"
)
EncoderOption = typer.Option(
    None,
    "--encoder",
    help="prompt encoder: minilm-onnx-int8 (default), minilm-onnx-int8-r3 (a faster int8 recipe), "
    "minilm-onnx (fp32: all-MiniLM-L6-v2's vectors), minilm-static (fast), or a local directory",
)
NoCache = typer.Option(False, "--no-cache", help="do not read or write the on-disk embedding cache")
PointsOption = typer.Option(61, "--points", min=20, help="cost-weight sweep points (>= 20)")


def _params(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise UserError(f"--param takes key=value, not {item!r}")
        out[k.strip()] = yaml.safe_load(v)
    return out


def _encoder(name: str | None):
    from policies.encoders import PromptEncoder

    return PromptEncoder(name) if name else PromptEncoder()


def _data(path: Path, fmt, allow_pickle, keep_contaminated, prices, models=None):
    from training.jobs import load

    ds = load(
        path,
        fmt,
        allow_pickle=allow_pickle,
        contamination_filter=not keep_contaminated,
        prices=prices,
        models=models,
    )
    typer.echo(f"{path}: {ds.report.summary()}", err=True)
    return ds


def _renamed(ds, mapping: dict[str, str]):
    """The data under pool names (prices apply under the data's own names, before this)."""
    from dataclasses import replace

    from router.model_map import rename

    models = rename(ds.models, mapping, "the data")
    kept = [m for m in ds.models if m not in mapping]
    if kept:
        typer.echo(f"--map: models it does not name keep their names: {kept}", err=True)
    responses = None if ds.responses is None else {mapping.get(m, m): r for m, r in ds.responses.items()}
    return replace(ds, models=models, responses=responses)


def _without_labels(ds, models: list[str]):
    """The data with `models`' quality cells masked (a leave-one-model-out training set)."""
    from dataclasses import replace

    unknown = [m for m in models if m not in ds.models]
    if unknown:
        raise UserError(f"--exclude-model: {unknown} not in the data; it has {ds.models}")
    mask = ds.mask.copy()
    mask[:, [ds.models.index(m) for m in models]] = False
    return replace(ds, mask=mask)


@app.command("train")
def train_cmd(
    policy: str = typer.Option(
        ...,
        "--policy",
        "-p",
        help="knn | logistic | mlp | mf | bt | cluster | cascade | routerdc | ensemble | pg",
    ),
    data: Path = typer.Option(..., "--data", "-d", help="training data file (or RouteLLM folder)"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact directory to write"),
    fmt: str | None = FormatOption,
    param: list[str] | None = typer.Option(None, "--param", help="hyper-parameter key=value (repeatable)"),
    allow_pickle: bool = AllowPickle,
    keep_contaminated: bool = NoContamination,
    prices: Path | None = PricesOption,
    encoder: str | None = EncoderOption,
    no_cache: bool = NoCache,
    model_map: Path | None = typer.Option(
        None,
        "--map",
        help="YAML/JSON {data model name: pool model name}: the artifact scores the pool's names "
        "(models it leaves out keep theirs)",
    ),
    exclude_model: list[str] | None = typer.Option(
        None,
        "--exclude-model",
        help="train without this model's quality labels (repeatable; its costs stay): irt keeps it at "
        "the mean ability until `moe-router calibrate` fits it",
    ),
) -> None:
    """Fit a learned policy on routing data and write its artifact directory."""
    from policies.artifacts import save_policy
    from router.model_map import read_map
    from training.jobs import make_policy, train

    params = _params(param)
    enc = _encoder(encoder)
    make_policy(policy, params, enc)  # a bad name or parameter fails before the data is read
    mapping = read_map(model_map) if model_map else {}
    ds = _data(data, fmt, allow_pickle, keep_contaminated, prices)
    if mapping:
        ds = _renamed(ds, mapping)
    if exclude_model:
        ds = _without_labels(ds, exclude_model)
    p = train(policy, ds, enc, params, cache=not no_cache, progress=True)
    save_policy(p, out, encoder=enc, metrics=p.metrics_, data={**ds.describe(), "model_map": mapping})
    cal = p.metrics_.get("calibration", {})
    line = f"trained {policy} on {len(ds)} prompts x {len(ds.models)} models in {p.metrics_['fit_seconds']:.1f} s"
    if "out_of_fold_calibrated" in cal:
        line += (
            f"; out-of-fold ECE {cal['out_of_fold_raw']['ece']:.4f} -> {cal['out_of_fold_calibrated']['ece']:.4f}"
            f" ({cal['method']})"
        )
    typer.echo(f"{line}; wrote {out}")


@app.command("eval")
def eval_cmd(
    artifact: Path = typer.Option(..., "--artifact", "-a", help="artifact directory from 'moe-router train'"),
    data: Path = typer.Option(..., "--data", "-d", help="test data file"),
    fmt: str | None = FormatOption,
    decisions: Path | None = typer.Option(
        None, "--decisions", help="write one JSON line per (point, prompt)"
    ),
    report: Path | None = typer.Option(None, "--report", help="write the metrics as JSON"),
    plot: Path | None = typer.Option(None, "--plot", help="write the cost-quality plot (PNG)"),
    points: int = PointsOption,
    allow_pickle: bool = AllowPickle,
    keep_contaminated: bool = NoContamination,
    prices: Path | None = PricesOption,
    no_cache: bool = NoCache,
) -> None:
    """Sweep the cost/quality trade-off of a trained policy on test data and report AIQ & co."""
    from policies.artifacts import load_policy
    from training.evaluate import plot as draw
    from training.evaluate import write_decisions
    from training.jobs import fmt as f
    from training.jobs import run_eval

    policy = load_policy(artifact)
    enc = policy.encoder if getattr(policy, "encoder", None) is not None else _encoder(None)
    ds = _data(data, fmt, allow_pickle, keep_contaminated, prices)
    missing = [m for m in ds.models if m not in policy.models_]
    if missing:
        raise UserError(f"the artifact does not score models in the test data: {missing}")
    ev = run_eval(policy, ds, enc, points=points, cache=not no_cache, progress=True)
    r = ev.report
    r["artifact"] = str(artifact)
    r["data"] = str(data)
    if decisions:
        write_decisions(ev, ds.models, decisions)
    if report:
        report.write_text(json.dumps(r, indent=2) + "\n")
    if plot:
        draw(ev, ds.models, plot, title=f"{artifact.name}: AIQ {f(r['aiq'])}")
    best = r["best_single"]
    ratio = r["cost_to_best_single_quality"]["ratio"]
    typer.echo(
        f"AIQ {f(r['aiq'])} (single models {f(r['aiq_single_models'])}); max quality {f(r['max_quality'])}; "
        f"best single {best['model']} {f(best['quality'])} at ${f(best['cost_usd'])}; "
        f"reaches it at {f(ratio, 3) + 'x its cost' if ratio is not None else 'never'}; "
        f"oracle {f(r['oracle']['quality'])}"
    )
    if "two_model" in r:
        t = r["two_model"]
        cpt = ", ".join(f"CPT({k}) {f(v, 3)}" for k, v in t["cpt_strong_share"].items())
        typer.echo(f"APGR {f(t['apgr'])}; {cpt} (share of calls to {t['strong']})")


@app.command("compare")
def compare_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="training data"),
    test: Path | None = typer.Option(
        None, "--test", "-t", help="test data (default: a seeded 20% split of --data)"
    ),
    policies: str = typer.Option(
        "knn,logistic,mlp,mf,cluster,bt,pg", "--policies", help="comma-separated names"
    ),
    fmt: str | None = FormatOption,
    points: int = PointsOption,
    report: Path | None = typer.Option(None, "--report", help="write all reports as JSON"),
    allow_pickle: bool = AllowPickle,
    keep_contaminated: bool = NoContamination,
    prices: Path | None = PricesOption,
    encoder: str | None = EncoderOption,
    seed: int = typer.Option(0, help="seed of the split when there is no --test"),
) -> None:
    """Train and evaluate several policies on the same data and print a table."""
    from policies.registry import POLICIES
    from training.jobs import compare, table

    names = [n.strip() for n in policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise UserError(f"unknown policies {unknown}; known: {', '.join(sorted(POLICIES))}")
    ds = _data(data, fmt, allow_pickle, keep_contaminated, prices)
    if test is None:
        train_ds, test_ds = ds.split(0.2, seed=seed)
    else:
        train_ds, test_ds = ds, _data(test, fmt, allow_pickle, keep_contaminated, prices)
        if set(test_ds.models) - set(train_ds.models):
            raise UserError(
                f"test data has models the training data lacks: {set(test_ds.models) - set(train_ds.models)}"
            )
        train_ds = train_ds.select_models(test_ds.models)
    rows = compare(names, train_ds, test_ds, _encoder(encoder), points=points, progress=True)
    typer.echo(table(rows))
    if report:
        report.write_text(json.dumps({r.policy: r.report for r in rows}, indent=2) + "\n")
