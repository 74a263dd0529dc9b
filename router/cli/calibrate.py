"""`moe-router calibrate`: give pool models an `irt` ability from K graded answers.

Online (default): K calibration items (shipped in the wheel) sent to each pool model through the
gateway's own dispatch; the abilities go to `routing.abilities_file`, which a running gateway
reads within a second. Offline (`--artifact DIR --data FILE --out DIR2`): the same fit from K
labelled prompts of a routing data file, written into a copy of the artifact (no calls).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, UserError, load
from router.cli.train import AllowPickle, FormatOption, NoCache, _data


@app.command()
def calibrate(
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="model to calibrate (repeatable; default: every chat model of the pool)"
    ),
    limit: int = typer.Option(100, "--limit", "-k", min=1, help="K: prompts per model"),
    seed: int = typer.Option(0, help="which K prompts"),
    config: Path | None = ConfigOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and its most cost; call nothing"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask before spending"),
    api_key: str = typer.Option(
        None, "--api-key", envvar="MOE_ROUTER_API_KEY", help="the key the calls are made (and budgeted) under"
    ),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="answer length cap per call"),
    policy_name: str = typer.Option("irt", "--policy", "-p", help="the irt policy whose prompt side is used"),
    artifact: Path | None = typer.Option(None, "--artifact", "-a", help="offline: an irt artifact directory"),
    data: Path | None = typer.Option(None, "--data", "-d", help="offline: labelled routing data"),
    out: Path | None = typer.Option(None, "--out", "-o", help="offline: the calibrated artifact to write"),
    fmt: str | None = FormatOption,
    allow_pickle: bool = AllowPickle,
    no_cache: bool = NoCache,
) -> None:
    """Fit pool models' abilities for the `irt` policy from K graded answers (online), or a model's
    from K labelled prompts of a data file (offline: --artifact, --data, --out)."""
    if artifact or data or out:
        if not (artifact and data and out and model and len(model) == 1):
            raise UserError("offline calibration needs --artifact, --data, --out and one --model")
        _offline(artifact, model[0], data, fmt, limit, seed, out, allow_pickle, not no_cache)
        return
    _online(config, model, limit, seed, dry_run, yes, api_key, max_tokens, policy_name)


def _offline(artifact, model, data, fmt, limit, seed, out, allow_pickle, cache) -> None:
    import numpy as np

    from policies.artifacts import load_policy, save_policy
    from policies.learned import fit_linear_nonneg
    from training.embed_cache import embed_for

    policy = load_policy(artifact)
    if not hasattr(policy, "fit_ability"):
        raise UserError(f"{artifact} is not an irt artifact (its policy cannot take a new model's ability)")
    ds = _data(data, fmt, allow_pickle, False, None)
    if model not in ds.models:
        raise UserError(f"model {model!r} is not in {data}; it has {ds.models}")
    j = ds.models.index(model)
    rows = np.flatnonzero(ds.mask[:, j])
    rows = np.sort(np.random.default_rng(seed).permutation(rows)[:limit])
    if not len(rows):
        raise UserError(f"{data} has no labelled prompt for {model}")
    sub = ds.subset(rows)
    X = embed_for(policy, sub.texts, policy.encoder, cache=cache)
    y = sub.quality[:, j]
    a, b, r = policy.fit_model(X, y)
    cost = None
    if sub.cost is not None and np.isfinite(sub.cost[:, j]).any():
        ok = np.isfinite(sub.cost[:, j])
        cost = np.array(fit_linear_nonneg(sub.tokens()[ok], sub.cost[ok, j]))
    policy.set_ability(model, a, b, "calibrated", cost_coef=cost, residual=(X, r))
    meta_data = {
        "calibrated": {model: {"prompts": int(len(rows)), "data": str(data), "accuracy": float(y.mean())}}
    }
    save_policy(policy, out, encoder=policy.encoder, metrics=policy.metrics_, data=meta_data)
    typer.echo(
        f"calibrated {model} from {len(rows)} prompts of {data} (accuracy {y.mean():.3f}); wrote {out}"
    )


def _online(config, models, limit, seed, dry_run, yes, api_key, max_tokens, policy_name) -> None:
    from router.quiet import quiet_libraries

    quiet_libraries()  # first: local models load in this process; no progress bars, as under `serve`
    from policies.calibration import load_items, pick
    from router import calibrate as cal
    from router.engine import Engine

    cfg = load(config)
    chat = [m.name for m in cfg.chat_models()]
    named = bool(models)
    models = list(models or chat)
    unknown = [m for m in models if m not in chat]
    if unknown:
        raise UserError(f"not chat models of this pool: {unknown}; the pool has {chat}")
    # a model whose credentials are not set cannot answer: named, it is an error; by default, skipped
    hints = {m.name: m.missing_env_hint() for m in cfg.chat_models()}
    why = {name: f"{hint} to enable it" for name, hint in hints.items() if hint}
    off = [m for m in models if m in why]
    if off and named:
        raise UserError("; ".join(f"{m} is unavailable: {why[m]}" for m in off))
    models = [m for m in models if m not in why]
    if not models:
        raise UserError(f"no pool model can be called: {'; '.join(f'{m}: {w}' for m, w in why.items())}")
    items = pick(load_items(), limit, seed)
    most = cal.estimate(cfg, models, items, max_tokens)
    typer.echo(
        f"calibrating {len(models)} model(s) on {len(items)} items each ({len(models) * len(items)} calls, "
        f"answers capped at {max_tokens} tokens): at most ${sum(most.values()):.4f}"
    )
    for m in models:
        typer.echo(f"  {m:<28} at most ${most[m]:.4f}")
    for m in off:
        typer.echo(f"  {m:<28} skipped: {why[m]}")
    if dry_run:
        typer.echo(f"dry run: nothing sent; abilities would go to {cfg.routing.abilities_path()}")
        return
    if not yes and sum(most.values()) > 0 and not typer.confirm("spend it?", default=True):
        raise typer.Abort()
    engine = Engine(cfg)
    policy = engine.policies.get(policy_name)
    if policy is None or not hasattr(policy, "fit_ability"):
        raise UserError(
            f"policy {policy_name!r} is not an irt policy of this gateway: {engine.policies.names}"
        )

    path = cfg.routing.abilities_path()

    def store(r: cal.ModelRun) -> None:  # as each model finishes: an interrupted run keeps it
        entry = cal.fit_and_store(policy, r, items, path)
        errs = f"; {len(r.errors)} calls failed ({r.errors[0]})" if r.errors else ""
        if entry is None:
            typer.echo(f"{r.model}: no answer graded{errs}; not calibrated")
            return
        typer.echo(
            f"{r.model}: {entry['accuracy']:.3f} right on {entry['items']} items, ${r.cost_usd:.4f}{errs}"
        )

    async def go():
        from router.errors import Unauthorized

        try:
            return await cal.run(
                engine, models, items, api_key=api_key, max_tokens=max_tokens, finished=store
            )
        except Unauthorized as e:  # the calls go through the gateway's own auth, as a client's
            if not api_key:
                raise UserError("this gateway requires API keys: pass one with --api-key") from None
            raise UserError(e.message) from None
        finally:
            await engine.aclose()

    asyncio.run(go())
    typer.echo(f"abilities written to {path} (a running gateway serves them within a second)")
