"""Price tables: cost data for routing sets that record correctness but no cost (RouteLLM).

cost = prompt_tokens x input price + completion_tokens x output price (USD per 1M tokens).
Completion tokens come from the data when recorded, else from the model's response text
(chars / 4), else `default_completion_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from training.dataset import RoutingDataset

# USD per 1M tokens (input, output): list prices of the models in shared/data at the time the
# data was collected (OpenAI for GPT-4 Turbo; Together/Anyscale-style hosting for Mixtral).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.6, 0.6),
}


def load_price_table(path: str | Path) -> dict[str, tuple[float, float]]:
    """JSON or YAML: {model: {"input": usd_per_1m, "output": usd_per_1m}} or {model: [in, out]}."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a price table maps model -> {{input, output}} USD per 1M tokens")
    out = {}
    for m, v in raw.items():
        if isinstance(v, dict):
            out[m] = (float(v["input"]), float(v["output"]))
        else:
            out[m] = (float(v[0]), float(v[1]))
    return out


def apply_prices(
    ds: RoutingDataset,
    prices: Mapping[str, tuple[float, float]] | None = None,
    default_completion_tokens: float = 256.0,
    overwrite: bool = False,
) -> RoutingDataset:
    """Fill `ds.cost` from a price table where it is unknown (in place; returns `ds`)."""
    prices = dict(DEFAULT_PRICES if prices is None else prices)
    missing = [m for m in ds.models if m not in prices]
    if missing:
        raise ValueError(f"no price for {missing}; give a price table with every model")
    n, m = len(ds), ds.n_models
    ptok = ds.tokens()
    ctok = np.full((n, m), float(default_completion_tokens))
    if ds.responses:
        for j, name in enumerate(ds.models):
            for i, r in enumerate(ds.responses.get(name) or []):
                if r:
                    ctok[i, j] = max(1, len(r) // 4)
    if ds.completion_tokens is not None:
        ctok = np.where(np.isfinite(ds.completion_tokens), ds.completion_tokens, ctok)
    pin = np.array([prices[x][0] for x in ds.models])
    pout = np.array([prices[x][1] for x in ds.models])
    priced = (ptok[:, None] * pin + ctok * pout) / 1e6
    if ds.cost is None or overwrite:
        ds.cost = priced
    else:
        ds.cost = np.where(np.isfinite(ds.cost), ds.cost, priced)
    ds.report.notes.append(f"cost from a price table for {len(ds.models)} models")
    return ds
