"""`moe-router config validate|show`."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from router.cli import app

config_app = typer.Typer(help="Check or print configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("validate")
def validate(path: Path = typer.Argument(None, help="config file (default: the embedded default)")) -> None:
    """Parse the config and build its policies, without loading any model."""
    from policies.encoders import PromptEncoder
    from router.config import load_config
    from router.policy_set import PolicySet

    cfg = load_config(path)
    policies = PolicySet(cfg, PromptEncoder(cfg.encoder.model, cache_size=cfg.encoder.cache_size))
    available = [m.name for m in cfg.models if not m.missing_env()]
    typer.echo(
        f"ok: {len(cfg.models)} models ({len(available)} available now), "
        f"policies: {', '.join(policies.names)} (default {policies.default}), state: {cfg.state}"
    )


@config_app.command("show")
def show(path: Path = typer.Argument(None, help="config file (default: the embedded default)")) -> None:
    """Print the effective config (file + environment). Secrets stay as their os.environ/ references."""
    from router.config import load_config

    cfg = load_config(path)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
