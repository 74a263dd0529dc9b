"""`moe-router` command line. Each command group lives in its own module and registers on `app`.

Errors a user can cause (bad config, unknown policy, unreadable data) print one line on stderr
and exit non-zero; they never show a traceback."""

from __future__ import annotations

import logging
import sys

import typer
from click import ClickException

app = typer.Typer(
    name="moe-router",
    help="Route each LLM request to the model that answers it well for the least money and time.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"moe-router {version('moe-router')}")
        raise typer.Exit()


@app.callback()
def _root(
    _: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Route each LLM request to the model that answers it well for the least money and time.

    Shell completion: `moe-router --install-completion` (or `--show-completion bash|zsh|fish`)."""


# command modules register themselves on `app` when imported
from router.cli import (  # noqa: E402,F401
    calibrate,
    config_cmd,
    export,
    keys,
    llm_router,
    models,
    ope,
    route,
    serve,
    tiny_moe,
    train,
)


def main() -> None:
    from router.cli.options import UserError
    from router.config import ConfigError
    from router.policy_set import PolicyError
    from router.private_files import UnsafeFile

    # commands report problems as one line; `serve` turns logging back on at its --log-level
    logging.getLogger("moe_router").setLevel(logging.ERROR)
    try:
        code = app(standalone_mode=False)
    except ModuleNotFoundError as e:
        typer.echo(
            f"error: the optional package {e.name!r} is not installed; "
            "training and evaluation jobs need: pip install 'moe-router[train]'",
            err=True,
        )
        sys.exit(1)
    except (UserError, ConfigError, PolicyError, UnsafeFile, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # click usage errors and the unexpected: one line, never a traceback
        if isinstance(e, typer.TyperException | ClickException):
            if e.format_message():  # a group run bare has printed its help and says nothing more
                typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        typer.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    # outside standalone mode typer returns an exit code instead of exiting: 130 for Ctrl-C
    if isinstance(code, int) and code:
        sys.exit(code)
