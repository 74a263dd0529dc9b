"""A routing policy that is a small causal LM fine-tuned (GRPO, Router-R1 style) to name a model.

The LM reads one instruction, the same at training and serving time (`render_prompt`): the
model roster (names, prices per 1M tokens, short descriptions) and the tail of the user's
prompt, and answers `<route>model-name</route>`. Greedy decoding, a few tokens: deterministic;
constrained by default to `<route>` + a roster name + `</route>` (`policies.route_constraint`).

How its choice reaches the shared decision (`policies.decision.decide`): `predict_quality`
returns, per prompt, 1.0 for the model the LM named and `OTHERS_SCALE` x the fallback policy's
prior (at most 0.5) for every other model. At cost_weight 0 the named model therefore always
ranks first (1.0 > 0.5) and the others keep the fallback's order as the fallback chain; a
request's cost weight, constraints and availability still apply as for every policy (a large
cost weight can overrule the LM when the named model is much dearer). When the output names no
model of the roster, the row is the fallback policy's own prediction (a catalogue baseline,
`strongest` by default, fitted on the roster's priors) and `fallback_count` goes up.

Artifact (written by `training.llm_router`): `policy.json` (type "llm", roster, params, training
curve, SHA-256 of the weights) and `model/` (the fine-tuned weights as safetensors + tokenizer).
Loading never unpickles nor runs code from the artifact.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import ModelInfo, Policy, PriorPolicy, PromptBatch
from policies.learned import tail
from policies.registry import policy_class
from policies.route_constraint import RouteTrie, logits_processors

MODEL_DIR = "model"
OTHERS_SCALE = 0.5  # non-chosen models get at most 0.5, so the LM's choice wins at cost_weight 0
SYSTEM = (
    "You are a router. Choose the one model that will answer the user's prompt correctly for the least cost."
)
ANSWER_CHARS = 300  # the tail of the first model's answer read in a second round
_ROUTE = re.compile(r"<route>(.*?)</route>", re.DOTALL)


def _key(name: str) -> str:
    # tokenizers may decode "gpt-4" as "gpt - 4" and may lower-case: compare without either
    return re.sub(r"\s+", "", name).lower()


def route_tags(text: str) -> list[str]:
    """The contents of every complete `<route>...</route>` tag in `text`, in order."""
    return _ROUTE.findall(text)


def match_model(name: str, models: Sequence[str]) -> str | None:
    """The roster name `name` designates (whitespace and case ignored), or None."""
    k = _key(name)
    for m in models:
        if _key(m) == k:
            return m
    return None


def parse_route(text: str, models: Sequence[str]) -> str | None:
    """The model named by the first `<route>...</route>` tag of `text`, if it is in `models`."""
    tags = route_tags(text)
    return match_model(tags[0], models) if tags else None


def _price(m: ModelInfo) -> str:
    if m.input_price_per_1m == m.output_price_per_1m:
        return f"${m.input_price_per_1m:.3g} per 1M tokens"
    return f"${m.input_price_per_1m:.3g} in / ${m.output_price_per_1m:.3g} out per 1M tokens"


def _tail(text: str, chars: int) -> str:
    cut = tail(text, chars)
    return cut if len(cut) == len(text) else "..." + cut


def instruction(
    prompt: str,
    roster: Sequence[ModelInfo],
    max_prompt_chars: int = 600,
    first: tuple[str, str] | None = None,
) -> str:
    """The user turn the router LM reads: the roster, then the prompt's tail (the question of a
    few-shot prompt comes last), then the answer format. Router-R1's second round (`first`:
    the model asked first and its answer): the answer's tail comes before the format, and naming
    that model again keeps its answer."""
    lines = [f"- {m.name}: {_price(m)}" + (f"; {m.description}" if m.description else "") for m in roster]
    head = "Models:\n" + "\n".join(lines) + f"\n\nUser prompt:\n{_tail(prompt, max_prompt_chars)}\n\n"
    if first is None:
        return head + "Reply with <route>model-name</route> and nothing else."
    model, answer = first
    return (
        head + f"{model} answered:\n{_tail(answer, ANSWER_CHARS)}\n\n"
        f"Reply with <route>{model}</route> to keep this answer, or <route>model-name</route> to ask "
        "another model (you pay for both), and nothing else."
    )


def render_prompt(
    tokenizer: Any,
    prompt: str,
    roster: Sequence[ModelInfo],
    max_prompt_chars: int = 600,
    first: tuple[str, str] | None = None,
) -> str:
    """The full text fed to the LM: its chat template when it has one, else plain text."""
    user = instruction(prompt, roster, max_prompt_chars, first)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{SYSTEM}\n\n{user}\n\n"


def roster_from_json(items: Sequence[dict[str, Any]]) -> list[ModelInfo]:
    return [ModelInfo(**item) for item in items]


def weight_hashes(model_dir: Path) -> dict[str, str]:
    from policies.artifacts import _sha256

    return {f.name: _sha256(f) for f in sorted(model_dir.glob("*.safetensors"))}


def write_meta(
    directory: str | Path,
    roster: Sequence[ModelInfo],
    params: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> Path:
    """Write `policy.json` for an artifact whose `model/` directory is already saved."""
    from policies.artifacts import FORMAT, FORMAT_VERSION, META, _version

    d = Path(directory)
    hashes = weight_hashes(d / MODEL_DIR)
    if not hashes:
        raise ValueError(f"{d / MODEL_DIR} holds no .safetensors weights")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "type": LLMRouterPolicy.name,
        "class": f"{LLMRouterPolicy.__module__}:{LLMRouterPolicy.__name__}",
        "params": params,
        "models": [m.name for m in roster],
        "roster": [asdict(m) for m in roster],
        "model_dir": MODEL_DIR,
        "model_sha256": hashes,
        "encoder": None,
        "state": {},
        "arrays": [],
        "metrics": metrics or {},
        "data": data or {},
        "moe_router_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (d / META).write_text(json.dumps(meta, indent=2) + "\n")
    return d / META


def fallback_class(name: str) -> type[PriorPolicy]:
    """The fallback must decide from the roster alone: a catalogue policy without embeddings."""
    cls = policy_class(name)
    if not issubclass(cls, PriorPolicy) or cls.needs_embeddings:
        raise ValueError(
            f"fallback {name!r} must be a catalogue policy that needs no embeddings (cheapest, strongest, random)"
        )
    return cls


class LLMRouterPolicy(Policy):
    """Routes with a fine-tuned LM that names the model; see the module docstring."""

    name = "llm"
    blocking = True  # generation: the gateway runs predictions in a worker thread

    def __init__(
        self,
        fallback: str = "strongest",
        max_new_tokens: int = 16,
        max_prompt_chars: int = 600,
        constrain: bool = True,
    ):
        self.fallback = fallback
        self.max_new_tokens = max_new_tokens
        self.max_prompt_chars = max_prompt_chars
        # decode only `<route>` + a roster name + `</route>` (policies.route_constraint)
        self.constrain = constrain
        # serving counters, not learned state: how often the LM answered, and how often it
        # named no model of the roster (the fallback policy decided instead)
        self.route_count = 0
        self.fallback_count = 0
        self._lock = threading.Lock()

    def fit(self, roster: Sequence[ModelInfo], model_dir: str | Path) -> LLMRouterPolicy:
        """Adopt a fine-tuned LM (weights + tokenizer in `model_dir`) for this roster. The LM
        itself is trained by `training.llm_router.train_llm_router`."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.roster_ = list(roster)
        self.fallback_ = fallback_class(self.fallback)().fit(self.roster_)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, use_safetensors=True
        )
        model.eval()
        self.tokenizer_, self.model_ = tok, model
        self.models_ = [m.name for m in self.roster_]
        self.trie_ = RouteTrie(tok, self.models_) if self.constrain else None
        return self

    @classmethod
    def load_artifact(cls, directory: str | Path, meta: dict[str, Any], **params: Any) -> LLMRouterPolicy:
        """Called by `policies.artifacts.load_policy` for artifacts of type "llm"."""
        d = Path(directory)
        model_dir = d / meta.get("model_dir", MODEL_DIR)
        if not model_dir.is_dir():
            raise ValueError(f"{d} is corrupt: {model_dir.name}/ is missing")
        want = meta.get("model_sha256") or {}
        have = weight_hashes(model_dir)
        if not want or want != have:
            raise ValueError(f"{d} is corrupt: the weights in {model_dir.name}/ do not match policy.json")
        from policies.artifacts import rebuild

        policy = rebuild(cls, d, meta, params)
        policy.fit(roster_from_json(meta["roster"]), model_dir)
        policy.metrics_ = meta.get("metrics", {})
        return policy

    # ---- prediction ----------------------------------------------------------------------------
    def generate(self, texts: Sequence[str], first: Sequence[tuple[str, str]] | None = None) -> list[str]:
        """The LM's raw answers (greedy; constrained to the roster's answers when `constrain`).
        `first`: per prompt, the model asked first and its answer (a Router-R1 second round)."""
        import torch

        self._check_fitted()
        if not texts:
            return []
        firsts = list(first) if first is not None else [None] * len(texts)
        prompts = [
            render_prompt(self.tokenizer_, t, self.roster_, self.max_prompt_chars, f)
            for t, f in zip(texts, firsts, strict=True)
        ]
        # tokenised exactly as trl's GRPOTrainer tokenised the training prompts (default special tokens)
        enc = self.tokenizer_(prompts, return_tensors="pt", padding=True).to(self.model_.device)
        with self._lock, torch.no_grad():
            out = self.model_.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer_.pad_token_id,
                logits_processor=logits_processors(self.trie_) if self.trie_ else None,
            )
        return self.tokenizer_.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def route(self, texts: Sequence[str], first: Sequence[tuple[str, str]] | None = None) -> list[str | None]:
        """The model the LM names for each prompt (None: unparseable, the fallback decides). With
        `first` (second round, offline evaluation on recorded answers): naming the first model
        again keeps its answer, another name asks that model."""
        return [parse_route(a, self.models_) for a in self.generate(texts, first)]

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        choices = self.route(batch.texts)
        prior = np.asarray(self.fallback_.predict_quality(batch), dtype=float)
        q = OTHERS_SCALE * np.clip(prior, 0.0, 1.0)
        for i, choice in enumerate(choices):
            if choice is None:
                q[i] = prior[i]
            else:
                q[i, self.models_.index(choice)] = 1.0
        with self._lock:
            self.route_count += len(choices)
            self.fallback_count += sum(c is None for c in choices)
        return q
