"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="YAML config file (default: the embedded default config)",
    envvar="MOE_ROUTER_CONFIG",
)


class UserError(Exception):
    """A problem the user can fix (bad input, missing file): printed as one line, exit code 1."""


def load(config: Path | None):
    from router.config import load_config

    return load_config(config)
