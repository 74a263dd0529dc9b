"""Online calibration: K graded calls per pool model through the gateway's own dispatch, then each
model's `irt` ability fitted from its grades and written to the abilities file a gateway serves.

Each call is an ordinary request for that model by name (`Engine.chat`), so the caller's key,
its budget and the ledger apply as to any client; `estimate` gives the most it can cost before
anything is sent. A call that fails is left ungraded (not counted as a wrong answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from policies.calibration import Item, grade
from router.config import RouterConfig
from router.constraints import prompt_tokens
from router.schemas import ChatCompletionRequest

MAX_TOKENS = 512  # enough for a worked GSM8K answer; an ARC answer is one letter


@dataclass
class ModelRun:
    model: str
    grades: list[float | None] = field(default_factory=list)  # None: the call failed
    cost_usd: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def graded(self) -> list[tuple[int, float]]:
        return [(i, g) for i, g in enumerate(self.grades) if g is not None]

    @property
    def accuracy(self) -> float | None:
        g = [x for _, x in self.graded]
        return float(np.mean(g)) if g else None


def _request(model: str, item: Item, max_tokens: int) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model=model,
        messages=[{"role": "user", "content": item.prompt}],
        max_tokens=max_tokens,
        temperature=0,
    )


def estimate(config: RouterConfig, models: Sequence[str], items: Sequence[Item], max_tokens: int) -> dict:
    """{model: USD}: the most the calls can cost (every answer at max_tokens)."""
    specs = {m.name: m for m in config.models}
    out = {}
    for name in models:
        spec = specs[name]
        out[name] = sum(
            spec.cost_usd(prompt_tokens(_request(name, it, max_tokens).messages), max_tokens) for it in items
        )
    return out


async def run(
    engine,
    models: Sequence[str],
    items: Sequence[Item],
    *,
    api_key: str | None = None,
    max_tokens: int = MAX_TOKENS,
    concurrency: int = 4,
    progress: Callable[[str, int, int], None] | None = None,
    finished: Callable[[ModelRun], None] | None = None,
) -> list[ModelRun]:
    """Ask every model every item through `engine` (started here, closed by the caller), one
    model after another; `finished(run)` is called as each model finishes, so its paid-for grades are
    stored before the next model starts (an interrupted run keeps the models it finished)."""
    from router.errors import RouterError

    caller = await engine.authenticate(api_key)
    await engine.start()
    gate = asyncio.Semaphore(concurrency)
    runs = []
    for name in models:
        r = ModelRun(name, [None] * len(items))
        done = 0

        async def ask(i: int, item: Item, r: ModelRun = r) -> None:
            nonlocal done
            async with gate:
                try:
                    result, outcome = await engine.chat(_request(r.model, item, max_tokens), caller)
                except (RouterError, OSError) as e:  # refused (budget), unavailable: not a wrong answer
                    r.errors.append(f"{type(e).__name__}: {getattr(e, 'message', e)}")
                else:
                    r.cost_usd += outcome.cost_usd or 0.0
                    if outcome.model == r.model:  # a fallback's answer says nothing of this model
                        r.grades[i] = grade(item, result.text)
            done += 1
            if progress:
                progress(r.model, done, len(items))

        await asyncio.gather(*(ask(i, it) for i, it in enumerate(items)))
        runs.append(r)
        if finished:
            finished(r)
    return runs


def fit_and_store(policy, run: ModelRun, items: Sequence[Item], abilities_file) -> dict | None:
    """Fit `run.model`'s ability from its grades (prompt side frozen) and write it; the entry
    written, or None when no call was graded."""
    from policies.irt import pack_residual, write_ability

    graded = run.graded
    if not graded:
        return None
    X = policy.embed([items[i].prompt for i, _ in graded])
    y = np.array([g for _, g in graded])
    a, b, r = policy.fit_model(X, y)
    entry = {
        "ability": [round(float(v), 6) for v in a],
        "bias": round(b, 6),
        "items": len(graded),
        "accuracy": round(float(y.mean()), 4),
        "predicted_accuracy": {k: round(v, 4) for k, v in policy.predicted_accuracy(a, b).items()},
        "cost_usd": round(run.cost_usd, 6),
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder": getattr(policy.encoder, "version", None),
    }
    if np.any(r):  # the graded items' local corrections (policies/irt.py), when they have weight
        entry["residual"] = pack_residual(X, r)
    write_ability(abilities_file, run.model, entry)
    return entry
