"""`moe-router tiny-moe`: build a tiny random Mixtral and a config that serves it, to watch a
local mixture-of-experts model's expert load without downloading anything."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from router.cli import app
from router.cli.options import UserError
from router.quiet import quiet_libraries

MODEL_NAME = "tiny-moe"


def tiny_moe_config(model_dir: Path) -> dict:
    """A pool of one local MoE model (any MoE checkpoint directory works the same way)."""
    return {
        "models": [
            {
                "name": MODEL_NAME,
                "backend": "transformers",
                "params": {"path": str(model_dir.resolve())},
                # random words: a few dozen are enough to watch the experts, and quick on a CPU
                "max_output_tokens": 32,
            }
        ]
    }


@app.command("tiny-moe")
def tiny_moe(
    out: Path = typer.Option(..., "--out", help="directory for the model and its config (created)"),
) -> None:
    """Build a tiny random Mixtral (4 experts, top-2; its answers are random words) in OUT and a
    config, OUT/tiny-moe.yaml, that serves it: expert load then shows on /metrics, in the
    x-moe-router-experts header and on the console's Overview."""
    quiet_libraries()  # before transformers is imported: no progress bars
    from adapters.tiny_moe import build_tiny_moe

    model_dir = out / "model"
    if model_dir.exists() and any(model_dir.iterdir()):
        raise UserError(f"{model_dir} is not empty: pick another --out")
    model_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_moe(model_dir)
    config = out / "tiny-moe.yaml"
    config.write_text(yaml.safe_dump(tiny_moe_config(model_dir), sort_keys=False))
    typer.echo(f"model: {model_dir}")
    typer.echo(f"config: {config}")
    typer.echo(f"serve it: moe-router serve --config {config}")
