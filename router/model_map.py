"""Model-name mapping: serve a policy trained on one set of model names with a pool of others.

A policy learned on RouterBench scores `gpt-4-1106-preview` and `mistralai/mixtral-8x7b-chat`;
the gateway's pool calls the same models (or their stand-ins) `gpt4` and `mixtral`. A mapping
{artifact name: pool name} renames them, at train time (`moe-router train --map FILE`: the
artifact then speaks pool names) or at serve time (`model_map:` in the policy's config entry).
Nothing is dropped silently: a name the mapping does not know is an error, and an artifact model
left without a pool model is reported (the policy routes among the ones it has).
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import Policy, PromptBatch


def read_map(path: str | Path) -> dict[str, str]:
    """A YAML or JSON file {from: to} (JSON is YAML); ValueError naming the file when it is not one."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such model map file: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML or JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{p}: a model map is a mapping of model names to model names")
    check_map(data)
    return data


def check_map(mapping: dict[str, str]) -> None:
    """Two models mapped onto one name would make one column shadow the other: refused."""
    seen: dict[str, str] = {}
    for src, dst in mapping.items():
        if dst in seen:
            raise ValueError(
                f"model map sends both {seen[dst]!r} and {src!r} to {dst!r}; map each to its own model"
            )
        seen[dst] = src


def rename(models: list[str], mapping: dict[str, str], what: str) -> list[str]:
    """`models` under `mapping` (names it leaves out keep theirs). ValueError when the mapping names
    a model that is not in `models`, or the result has a name twice."""
    unknown = sorted(set(mapping) - set(models))
    if unknown:
        raise ValueError(f"model map names models not in {what}: {unknown}; {what} has {models}")
    out = [mapping.get(m, m) for m in models]
    twice = sorted({m for m in out if out.count(m) > 1})
    if twice:
        raise ValueError(
            f"model map gives two of {what}'s models the name {twice}; map each to its own model"
        )
    return out


class MappedPolicy(Policy):
    """A fitted policy under other model names. Its columns keep their order, so quality passes
    through unchanged; only the names it reports (`models_`) are the pool's. Cost and latency it
    leaves to the gateway (the pool's prices, measured latency): the models answering now are the
    pool's, whose prices and speed need not be those of the data's models."""

    def __init__(self, inner: Policy, mapping: dict[str, str]):
        self.inner = inner
        self.mapping = dict(mapping)
        self.models_ = rename(list(inner.models_), self.mapping, "the artifact")
        self.name = inner.name
        self.needs_embeddings = inner.needs_embeddings
        self.blocking = inner.blocking

    def __getattr__(self, attr: str) -> Any:
        # anything else the gateway reads (metrics_, should_escalate, ...) is the policy's own
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        return self.inner.predict_quality(batch)


class MappedCascade(MappedPolicy):
    """A cascade under other names: the models its plans name (first, escalate_to, ...) are the pool's."""

    def cascade_plan(self, batch: PromptBatch) -> list[Any]:
        def pool_names(plan):
            names = {f.name: getattr(plan, f.name) for f in fields(plan)}
            return replace(
                plan,
                **{k: self.mapping[v] for k, v in names.items() if isinstance(v, str) and v in self.mapping},
            )

        return [pool_names(p) for p in self.inner.cascade_plan(batch)]


def mapped(policy: Policy, mapping: dict[str, str]) -> Policy:
    """`policy` serving under `mapping` (itself when the mapping is empty)."""
    if not mapping:
        return policy
    if policy.online:
        raise ValueError("model_map applies to offline artifacts; an online policy learns under pool names")
    cls = MappedCascade if hasattr(policy, "cascade_plan") else MappedPolicy
    return cls(policy, mapping)
