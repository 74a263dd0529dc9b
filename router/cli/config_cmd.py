"""`moe-router config validate|show`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
import yaml

from router.cli import app
from router.cli.options import ConfigOption, UserError, load

config_app = typer.Typer(help="Check or print configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

PathArgument = typer.Argument(None, help="config file (same as -c; default: the embedded default)")


def _path(path: Path | None, config: Path | None) -> Path | None:
    if path is not None and config is not None and path != config:
        raise UserError(f"two config files given ({path} and {config}): pass one")
    return path or config


@config_app.command("validate")
def validate(
    path: Path = PathArgument,
    config: Path | None = ConfigOption,
    check: bool = typer.Option(
        False, "--check", help="also probe each model's endpoint (free: GET /models, files on disk)"
    ),
    timeout_s: float = typer.Option(3.0, "--timeout", min=0.1, help="seconds per probe"),
) -> None:
    """Parse the config, build its policies and model adapters (without loading any model, the
    routing encoder included: its files are looked for), and with --check probe every model; exit 1
    if anything is invalid or unreachable."""
    from router.policy_set import PolicySet, build_encoder
    from router.probe import UNREACHABLE, check_backends, check_params, probe_models

    cfg = load(_path(path, config))
    check_backends(cfg.models)
    policies = PolicySet(cfg, build_encoder(cfg, unloaded=True))
    problems = check_params(cfg.models)
    if problems:
        raise UserError("; ".join(problems))
    available = [m.name for m in cfg.models if not m.missing_env()]
    typer.echo(
        f"ok: {len(cfg.models)} models ({len(available)} available now), "
        f"policies: {', '.join(policies.names)} (default {policies.default}), state: {cfg.state}"
    )
    for w in policies.warnings:
        typer.echo(f"  warning: {w}")
    if not check:
        return
    probes = asyncio.run(probe_models(cfg.models, timeout_s))
    for p in probes:
        typer.echo(f"  {p.name:<28} {p.status:<12} {p.detail}")
    down = [p.name for p in probes if p.status == UNREACHABLE]
    if down:
        raise UserError(f"unreachable: {', '.join(down)}")


@config_app.command("show")
def show(path: Path = PathArgument, config: Path | None = ConfigOption) -> None:
    """Print the effective config (file + environment). Secrets stay as their os.environ/ references."""
    cfg = load(_path(path, config))
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
