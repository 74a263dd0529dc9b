"""Loaders: the published routing-data formats -> `RoutingDataset`.

Every loader masks a blank cell (never reads it as 0), drops rows it cannot read (and counts
them in `dataset.report`), and refuses a file that is not of its format with one clear message.

Formats:
- `routerbench`: wide CSV, one row per prompt: `prompt` (a Python-literal list of strings),
  per model `M` (quality), `M|total_cost`, `M|model_response`.
- `routerbench-pickle`: the full RouterBench release (a pickled DataFrame, same columns). Pickles
  run code when loaded, so this needs `allow_pickle=True` (`--allow-pickle`).
- `routellm`: `prompt` + one True/False column per model (+ `M_response`); a file or a folder of
  them (MMLU: one file per subject). Prompts listed in `contaminated_prompts.jsonl` beside the
  files are dropped unless `contamination_filter=False`.
- `routerdc`: JSON list of `{"question", "scores": {model: 0..1}, "cluster_id"?}`.
- `jsonl` / `parquet`: ours, one row per (prompt, model) observation (see docs/learned-policies.md).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset import LoadReport, RoutingDataset, text_key

FORMATS = ("routerbench", "routerbench-pickle", "routellm", "routerdc", "jsonl", "parquet")
CANONICAL_FIELDS = (
    "prompt_id",
    "prompt",
    "model",
    "quality",
    "cost_usd",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "source",
)


def guess_format(path: Path) -> str:
    if path.is_dir():
        return "routellm"
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".json":
        return "routerdc"
    if suffix in {".pkl", ".pickle"}:
        return "routerbench-pickle"
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            header = f.readline()
        return "routerbench" if "|total_cost" in header else "routellm"
    raise ValueError(f"cannot tell the format of {path}; pass --format ({', '.join(FORMATS)})")


def load_dataset(
    path: str | Path,
    format: str | None = None,
    *,
    allow_pickle: bool = False,
    contamination_filter: bool = True,
) -> RoutingDataset:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    fmt = format or guess_format(path)
    if fmt == "routerbench":
        return load_routerbench(path)
    if fmt == "routerbench-pickle":
        return load_routerbench_pickle(path, allow_pickle=allow_pickle)
    if fmt == "routellm":
        return load_routellm(path, contamination_filter=contamination_filter)
    if fmt == "routerdc":
        return load_routerdc(path)
    if fmt == "jsonl":
        return load_jsonl(path)
    if fmt == "parquet":
        return load_parquet(path)
    raise ValueError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")


# ---- cells ---------------------------------------------------------------------------------------
def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _number(v: Any) -> float:
    """A quality/cost cell -> float; NaN for blank; ValueError for garbage."""
    if _blank(v):
        return math.nan
    if isinstance(v, bool | np.bool_):
        return float(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in {"true", "false"}:
            return float(s == "true")
        return float(s)
    return float(v)


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file") from None


# ---- RouterBench --------------------------------------------------------------------------------
def _routerbench_prompt(v: Any) -> str:
    """The `prompt` cell is a Python-literal list of strings (parsed as a literal, never executed)."""
    if isinstance(v, list | tuple):
        return "\n".join(map(str, v))
    s = str(v)
    if s.startswith("["):
        try:
            parts = ast.literal_eval(s)
            if isinstance(parts, list | tuple):
                return "\n".join(map(str, parts))
        except (ValueError, SyntaxError):
            pass
    return s


def _from_wide(df, source: str) -> RoutingDataset:
    cols = list(df.columns)
    models = [c[: -len("|total_cost")] for c in cols if c.endswith("|total_cost")]
    if "prompt" not in cols or not models:
        raise ValueError(
            f"{source}: not a RouterBench file (needs a 'prompt' column and 'MODEL|total_cost' columns; "
            f"found {cols[:6]}{'...' if len(cols) > 6 else ''})"
        )
    missing = [m for m in models if m not in cols]
    if missing:
        raise ValueError(f"{source}: quality columns missing for {missing}")
    rep = LoadReport(source=source, rows_read=len(df))
    texts, ids, Q, C, evals, resp = [], [], [], [], [], {m: [] for m in models}
    has_resp = all(f"{m}|model_response" in cols for m in models)
    for r in df.to_dict("records"):
        text = _routerbench_prompt(r["prompt"])
        if _blank(text):
            rep.drop("blank prompt")
            continue
        try:
            q = [_number(r[m]) for m in models]
            c = [_number(r[m + "|total_cost"]) for m in models]
        except (TypeError, ValueError):
            rep.drop("unreadable quality or cost")
            continue
        if any(x < 0 or x > 1 for x in q if not math.isnan(x)) or any(x < 0 for x in c if not math.isnan(x)):
            rep.drop("quality outside 0..1 or negative cost")
            continue
        if all(math.isnan(x) for x in q):
            rep.drop("no model has a quality")
            continue
        texts.append(text)
        ids.append(str(r.get("sample_id") or text_key(text)))
        Q.append(q)
        C.append(c)
        evals.append(r.get("eval_name"))
        if has_resp:
            for m in models:
                v = r.get(f"{m}|model_response")
                resp[m].append(None if _blank(v) else _routerbench_prompt(v))
    if not texts:
        raise ValueError(f"{source}: no readable rows ({rep.summary()})")
    Q = np.array(Q, dtype=float)
    mask = ~np.isnan(Q)
    rep.rows_kept = len(texts)
    rep.cells_masked = int((~mask).sum())
    meta = {"eval_name": evals} if any(e is not None for e in evals) else {}
    return RoutingDataset(
        texts=texts,
        models=models,
        quality=Q,
        mask=mask,
        cost=np.array(C, dtype=float),
        prompt_ids=ids,
        responses=resp if has_resp else None,
        meta=meta,
        report=rep,
    )


def load_routerbench(path: Path) -> RoutingDataset:
    return _from_wide(_read_csv(path), str(path))


def load_routerbench_pickle(path: Path, *, allow_pickle: bool = False) -> RoutingDataset:
    if not allow_pickle:
        raise ValueError(
            f"{path} is a pickle: loading one runs code from the file. "
            "Pass --allow-pickle (allow_pickle=True) only for a file you trust"
        )
    import pandas as pd

    df = pd.read_pickle(path)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{path}: the pickle holds a {type(df).__name__}, not a DataFrame")
    df = df.reset_index(drop=True)
    return _from_wide(df.astype(object).where(df.notna(), None), str(path))


# ---- RouteLLM -----------------------------------------------------------------------------------
def _contaminated(folder: Path) -> set[str] | None:
    f = folder / "contaminated_prompts.jsonl"
    if not f.exists():
        return None
    out = set()
    for line in f.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            for k in ("eval_prompt", "prompt"):
                if d.get(k):
                    out.add(d[k].strip())
    return out


def load_routellm(path: Path, *, contamination_filter: bool = True) -> RoutingDataset:
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no RouteLLM CSV files in this folder")
    folder = path if path.is_dir() else path.parent
    bad = _contaminated(folder) if contamination_filter else set()
    rep = LoadReport(source=str(path))
    models: list[str] | None = None
    texts, Q, subjects, resp = [], [], [], {}
    for f in files:
        df = _read_csv(f)
        cols = list(df.columns)
        mcols = [c for c in cols if c != "prompt" and not c.endswith("_response") and c.strip()]
        mcols = [c for c in mcols if not c.startswith("Unnamed")]
        if any("|" in c for c in cols):
            raise ValueError(
                f"{f}: not a RouteLLM file (it has RouterBench 'MODEL|...' columns: use --format routerbench)"
            )
        if "prompt" not in cols or len(mcols) < 2:
            raise ValueError(
                f"{f}: not a RouteLLM file (needs 'prompt' and one True/False column per model; found {cols})"
            )
        if models is None:
            models = mcols
            resp = {m: [] for m in models if f"{m}_response" in cols}
        elif set(mcols) != set(models):
            raise ValueError(f"{f}: models {mcols} differ from {models} in the other files")
        subject = f.stem.removeprefix("mmlu_") if f.stem.startswith("mmlu_") else f.stem
        rep.rows_read += len(df)
        for r in df.to_dict("records"):
            text = str(r["prompt"])
            if _blank(text):
                rep.drop("blank prompt")
                continue
            if bad is not None and text.strip() in bad:
                rep.drop("contaminated prompt")
                continue
            try:
                q = [_number(r[m]) for m in models]
            except (TypeError, ValueError):
                rep.drop("unreadable correctness")
                continue
            if any(x < 0 or x > 1 for x in q if not math.isnan(x)):
                rep.drop("quality outside 0..1")
                continue
            if all(math.isnan(x) for x in q):
                rep.drop("no model has a quality")
                continue
            texts.append(text)
            Q.append(q)
            subjects.append(subject)
            for m in resp:
                v = r.get(f"{m}_response")
                resp[m].append(None if _blank(v) else str(v))
    if contamination_filter and bad is None:
        rep.notes.append("contamination filter not applied: no contaminated_prompts.jsonl beside the data")
    if not texts:
        raise ValueError(f"{path}: no readable rows ({rep.summary()})")
    Q = np.array(Q, dtype=float)
    mask = ~np.isnan(Q)
    rep.rows_kept = len(texts)
    rep.cells_masked = int((~mask).sum())
    # no cost in RouteLLM data: apply a price table (`training.prices`) when cost matters
    return RoutingDataset(
        texts=texts,
        models=list(models or []),
        quality=Q,
        mask=mask,
        responses={m: resp[m] for m in resp} if resp and len(resp) == len(models or []) else None,
        meta={"subject": subjects} if len(files) > 1 else {},
        report=rep,
    )


# ---- RouterDC -----------------------------------------------------------------------------------
def load_routerdc(path: Path) -> RoutingDataset:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict) or "scores" not in rows[0]:
        raise ValueError(f'{path}: not a RouterDC file (a JSON list of {{"question", "scores"}} objects)')
    rep = LoadReport(source=str(path), rows_read=len(rows))
    models: list[str] = []
    for r in rows:
        if isinstance(r, dict) and isinstance(r.get("scores"), dict):
            models.extend(m for m in r["scores"] if m not in models)
    texts, Q, clusters = [], [], []
    for r in rows:
        if not isinstance(r, dict) or _blank(r.get("question")) or not isinstance(r.get("scores"), dict):
            rep.drop("no question or scores")
            continue
        try:
            q = [_number(r["scores"].get(m)) for m in models]
        except (TypeError, ValueError):
            rep.drop("unreadable score")
            continue
        if any(x < 0 or x > 1 for x in q if not math.isnan(x)):
            rep.drop("score outside 0..1")
            continue
        if all(math.isnan(x) for x in q):
            rep.drop("no model has a score")
            continue
        texts.append(str(r["question"]))
        Q.append(q)
        clusters.append(r.get("cluster_id"))
    if not texts:
        raise ValueError(f"{path}: no readable rows ({rep.summary()})")
    Q = np.array(Q, dtype=float)
    mask = ~np.isnan(Q)
    rep.rows_kept = len(texts)
    rep.cells_masked = int((~mask).sum())
    meta: dict[str, list[Any]] = {"task": [path.stem.replace("-", "_").rsplit("_", 1)[0]] * len(texts)}
    if any(c is not None for c in clusters):
        meta["cluster_id"] = clusters
    return RoutingDataset(texts=texts, models=models, quality=Q, mask=mask, meta=meta, report=rep)


# ---- canonical (ours) ---------------------------------------------------------------------------
def from_observations(rows: Iterable[dict[str, Any]], source: str = "") -> RoutingDataset:
    """One row per (prompt, model) observation -> matrices. Repeated observations of the same
    (prompt, model) are averaged; null quality/cost/latency stay unobserved."""
    rep = LoadReport(source=source)
    prompts: dict[str, int] = {}
    texts: list[str] = []
    ids: list[str] = []
    models: dict[str, int] = {}
    obs: dict[tuple[int, int], dict[str, list[float]]] = {}
    ptok: dict[int, float] = {}
    for r in rows:
        rep.rows_read += 1
        if r is None:
            rep.drop("not a JSON object")
            continue
        prompt, model = r.get("prompt"), r.get("model")
        if _blank(prompt) or _blank(model):
            rep.drop("no prompt or model")
            continue
        try:
            vals = {k: _number(r.get(k)) for k in ("quality", "cost_usd", "latency_ms", "completion_tokens")}
            pt = _number(r.get("prompt_tokens"))
        except (TypeError, ValueError):
            rep.drop("unreadable number")
            continue
        q = vals["quality"]
        if (not math.isnan(q) and not 0 <= q <= 1) or (vals["cost_usd"] < 0):
            rep.drop("quality outside 0..1 or negative cost")
            continue
        pid = str(r.get("prompt_id") if not _blank(r.get("prompt_id")) else text_key(str(prompt)))
        i = prompts.setdefault(pid, len(prompts))
        if i == len(texts):
            texts.append(str(prompt))
            ids.append(pid)
        j = models.setdefault(str(model), len(models))
        cell = obs.setdefault((i, j), {k: [] for k in vals})
        for k, v in vals.items():
            if not math.isnan(v):
                cell[k].append(v)
        if not math.isnan(pt):
            ptok[i] = pt
    if not texts:
        raise ValueError(f"{source}: no readable observations ({rep.summary()})")
    n, m = len(texts), len(models)
    mats = {k: np.full((n, m), np.nan) for k in ("quality", "cost_usd", "latency_ms", "completion_tokens")}
    for (i, j), cell in obs.items():
        for k, v in cell.items():
            if v:
                mats[k][i, j] = float(np.mean(v))
    mask = ~np.isnan(mats["quality"])
    rep.rows_kept = n
    rep.cells_masked = int((~mask).sum())

    def opt(a):
        return a if np.isfinite(a).any() else None

    return RoutingDataset(
        texts=texts,
        models=list(models),
        quality=mats["quality"],
        mask=mask,
        cost=opt(mats["cost_usd"]),
        latency=opt(mats["latency_ms"]),
        completion_tokens=opt(mats["completion_tokens"]),
        prompt_tokens=np.array([ptok.get(i, np.nan) for i in range(n)]) if ptok else None,
        prompt_ids=ids,
        report=rep,
    )


def load_jsonl(path: Path) -> RoutingDataset:
    def rows():
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    d = None
                yield d if isinstance(d, dict) else None

    return from_observations(rows(), str(path))


def load_parquet(path: Path) -> RoutingDataset:
    import pandas as pd

    df = pd.read_parquet(path)
    if "prompt" not in df.columns or "model" not in df.columns:
        raise ValueError(f"{path}: needs 'prompt' and 'model' columns (found {list(df.columns)})")
    df = df.astype(object).where(df.notna(), None)
    return from_observations(df.to_dict("records"), str(path))


def observations(ds: RoutingDataset, source: str | None = None) -> Iterable[dict[str, Any]]:
    """The canonical rows of a dataset (one per observed or priced (prompt, model) cell)."""

    def val(a, i, j):
        if a is None or not np.isfinite(a[i, j]):
            return None
        return float(a[i, j])

    for i, text in enumerate(ds.texts):
        for j, m in enumerate(ds.models):
            q = val(ds.quality, i, j)
            c = val(ds.cost, i, j)
            if q is None and c is None:
                continue
            row = {
                "prompt_id": ds.prompt_ids[i],
                "prompt": text,
                "model": m,
                "quality": q,
                "cost_usd": c,
                "latency_ms": val(ds.latency, i, j),
            }
            if ds.prompt_tokens is not None and np.isfinite(ds.prompt_tokens[i]):
                row["prompt_tokens"] = int(ds.prompt_tokens[i])
            ct = val(ds.completion_tokens, i, j)
            if ct is not None:
                row["completion_tokens"] = int(ct)
            if source:
                row["source"] = source
            yield row


def save_jsonl(ds: RoutingDataset, path: str | Path, source: str | None = None) -> int:
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for row in observations(ds, source):
            f.write(json.dumps(row) + "\n")
            n += 1
    return n
