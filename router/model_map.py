"""Model-name mapping: serve a policy trained on one set of model names with a pool of others.

A policy learned on RouterBench scores `gpt-4-1106-preview` and `mistralai/mixtral-8x7b-chat`;
the gateway's pool calls the same models (or their stand-ins) `gpt4` and `mixtral`. A mapping
{artifact name: pool name} renames them, at train time (`moe-router train --map FILE`: the
artifact then speaks pool names) or at serve time (`model_map:` in the policy's config entry).
Nothing is dropped silently: a name the mapping does not know is an error, and an artifact model
left without a pool model is reported (the policy routes among the ones it has).
"""

from __future__ import annotations

from pathlib import Path


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
