"""Policy artifacts: a fitted policy on disk, loadable by the gateway from config by path.

An artifact is a directory:

    policy.json          type, class, hyper-parameters, model list (column order), encoder
                         name + version + build, JSON-able learned state, training metrics, data summary,
                         moe-router version, and the SHA-256 of the arrays file
    arrays.safetensors   every learned numpy array (attributes ending in `_`)

Nothing is pickled, so loading an artifact never runs code from it. `load_policy` refuses an
artifact that is corrupt, of an unknown type or format version, or fitted with a different
encoder (name, version, or build other than torch <-> onnx fp32, which give the same vectors)
than the one it would be served with: its embeddings would mean something else. An artifact with
no recorded build was fitted through torch (or the static encoder, by its name). A policy class
that has its own encoder (`policies.capabilities.OwnEncoder`: routerdc) writes its fine-tuned encoder into the artifact (`save_encoder`)
and embeds with that one (`load_encoder`), whatever the caller's encoder.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import Policy
from policies.capabilities import LoadsItself, OwnEncoder, implements
from policies.registry import POLICIES, policy_class

FORMAT = "moe-router-policy"
FORMAT_VERSION = 1
META = "policy.json"
ARRAYS = "arrays.safetensors"
# attributes that are not learned state: the model list is stored on its own, metrics apart
_NOT_STATE = {"models_", "metrics_"}


def _version() -> str:
    try:
        return metadata.version("moe-router")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _registry_name(policy: Policy) -> str:
    target = f"{type(policy).__module__}:{type(policy).__name__}"
    for name, t in POLICIES.items():
        if t == target:
            return name
    raise ValueError(f"{target} is not in policies.registry.POLICIES; register it to save it")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_policy(
    policy: Policy,
    directory: str | Path,
    *,
    encoder: Any = None,
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> Path:
    """Write a fitted policy to `directory` (created; existing artifact files are replaced)."""
    from safetensors.numpy import save_file

    if not policy.fitted:
        raise ValueError(f"policy {policy.name!r} is not fitted; nothing to save")
    if policy.needs_embeddings and encoder is None:
        raise ValueError("a policy that reads embeddings must be saved with its encoder")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if implements(policy, OwnEncoder):  # it embeds with an encoder it fine-tuned: saved here
        encoder = policy.save_encoder(out)
    arrays: dict[str, np.ndarray] = {}
    state: dict[str, Any] = {}
    for k, v in vars(policy).items():
        if not k.endswith("_") or k.startswith("_") or k in _NOT_STATE:
            continue
        if isinstance(v, np.ndarray):
            arrays[k] = np.ascontiguousarray(v)
        elif isinstance(v, np.generic):
            state[k] = v.item()
        elif _jsonable(v):
            state[k] = v
        else:
            raise ValueError(f"learned attribute {k} ({type(v).__name__}) cannot be saved without pickle")
    params = {k: v for k, v in policy.get_params().items() if k != "encoder"}
    bad = [k for k, v in params.items() if not _jsonable(v)]
    if bad:
        raise ValueError(f"hyper-parameters {bad} are not JSON-serialisable")
    save_file(arrays, str(out / ARRAYS))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "type": _registry_name(policy),
        "class": f"{type(policy).__module__}:{type(policy).__name__}",
        "params": params,
        "models": list(policy.models_),
        "encoder": None
        if encoder is None
        else {
            "name": encoder.name,
            "version": encoder.version,
            "build": getattr(encoder, "build", "torch"),
            "model": getattr(encoder, "model", None),
        },
        "state": state,
        "arrays": sorted(arrays),
        "arrays_sha256": _sha256(out / ARRAYS),
        "metrics": metrics if metrics is not None else getattr(policy, "metrics_", {}),
        "data": data or {},
        "moe_router_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / META).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON-serialisable")


def read_metadata(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"no policy artifact at {d} (not a directory)")
    f = d / META
    if not f.exists():
        raise ValueError(f"{d} is not a policy artifact: {META} is missing")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{f} is not a moe-router policy artifact")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{d}: artifact format version {meta.get('format_version')} is not supported "
            f"(this moe-router reads version {FORMAT_VERSION}); retrain it"
        )
    for key in ("type", "params", "models", "state", "arrays"):
        if key not in meta:
            raise ValueError(f"{f} is corrupt: no {key!r}")
    return meta


def _recorded_build(want: dict[str, Any]) -> str:
    if want.get("build"):
        return str(want["build"])
    return "static" if want.get("name") == "moe-router/minilm-static" else "torch"  # before builds


def fitted_encoder(directory: str | Path) -> str | None:
    """The `encoder.model` an artifact serves with: the one it was fitted with (ONNX fp32 for a torch
    fit: the same vectors, faster). None when it records none (it reads no embeddings, or embeds
    with an encoder of its own) or cannot be read (loading it reports why)."""
    try:
        meta = json.loads((Path(directory) / META).read_text())
    except (OSError, ValueError):
        return None
    want = meta.get("encoder") if isinstance(meta, dict) else None
    cls = policy_class(meta["type"]) if meta.get("type") in POLICIES else None
    if not isinstance(want, dict) or (cls is not None and implements(cls, OwnEncoder)):
        return None
    build = _recorded_build(want)
    if build == "torch" and want.get("name") == "sentence-transformers/all-MiniLM-L6-v2":
        return "minilm-onnx"
    return _int8_model(want, build) or want.get("model") or want.get("name")


def _int8_model(want: dict[str, Any], build: str) -> str | None:
    """The `encoder.model` that builds the int8 recipe an artifact was fitted with (by name when it
    is not the default recipe); None for other builds."""
    from policies.encoders import int8_model, int8_recipe_of

    recipe = int8_recipe_of(str(want.get("version") or "")) if build == "onnx-int8" else None
    return int8_model(recipe) if recipe is not None else None


def check_encoder(meta: dict[str, Any], encoder: Any, where: str) -> None:
    from policies.encoders import build_family

    want = meta.get("encoder")
    if want is None:
        return
    have = {"name": encoder.name, "version": encoder.version, "build": getattr(encoder, "build", "torch")}
    fitted = _recorded_build(want)
    if build_family(fitted) != build_family(have["build"]):
        raise ValueError(
            f"{where} was fitted with the {fitted!r} build of encoder {want.get('name')} (model "
            f"{want.get('model')!r}), but this gateway encodes prompts with the {have['build']!r} build "
            f"(encoder.model {getattr(encoder, 'model', None)!r}), whose vectors differ; retrain the policy "
            f"with this encoder, or set encoder.model to {want.get('model') or want.get('name')!r}"
        )
    if (want.get("name"), want.get("version")) != (have["name"], have["version"]):
        model = _int8_model(want, fitted)
        hint = f" (encoder.model: {model})" if model else ""
        raise ValueError(
            f"{where} was trained with encoder {want.get('name')} {want.get('version')}, but this gateway "
            f"encodes prompts with {have['name']} {have['version']}; retrain the policy with this encoder "
            f"or configure the encoder it was trained with{hint}"
        )


def rebuild(
    cls: type[Policy], d: Path, meta: dict[str, Any], params: dict[str, Any], encoder: Any = None
) -> Policy:
    """A policy of the artifact's hyper-parameters, with `params` overriding known ones only."""
    import inspect

    init = dict(meta["params"])
    unknown = sorted(set(params) - set(init))
    if unknown:
        raise ValueError(f"unknown parameters for a {meta['type']} policy: {unknown}; known: {sorted(init)}")
    init.update(params)
    try:
        if "encoder" in inspect.signature(cls.__init__).parameters:
            init["encoder"] = encoder
        return cls(**init)
    except TypeError as e:
        raise ValueError(f"{d}: cannot rebuild the {meta['type']} policy: {e}") from None


def load_policy(directory: str | Path, encoder: Any = None, **params: Any) -> Policy:
    """Load a fitted policy. `encoder`: the encoder the caller will embed prompts with (checked
    against the one the policy was fitted with; for a policy that embeds, the encoder recorded in
    the artifact is built when none is given). `params` override serving-time hyper-parameters."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = Path(directory)
    meta = read_metadata(d)
    if meta["type"] not in POLICIES:
        raise ValueError(f"{d}: unknown policy type {meta['type']!r}; known: {', '.join(sorted(POLICIES))}")
    cls = policy_class(meta["type"])
    if implements(cls, LoadsItself):  # its own layout (the fine-tuned LLM router): it loads itself
        return cls.load_artifact(d, meta, **params)
    if implements(cls, OwnEncoder):  # its encoder is in the artifact; the caller's is unused
        encoder = cls.load_encoder(d, meta)
    elif meta.get("encoder") is not None:
        if encoder is None:
            from policies.encoders import PromptEncoder

            encoder = PromptEncoder(meta["encoder"].get("model") or meta["encoder"]["name"])
        check_encoder(meta, encoder, str(d))
    f = d / ARRAYS
    if not f.exists():
        raise ValueError(f"{d} is corrupt: {ARRAYS} is missing")
    if meta.get("arrays_sha256") and _sha256(f) != meta["arrays_sha256"]:
        raise ValueError(f"{d} is corrupt: {ARRAYS} does not match the checksum in {META}")
    try:
        arrays = load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{d} is corrupt: cannot read {ARRAYS} ({e})") from None
    missing = sorted(set(meta["arrays"]) - set(arrays))
    if missing:
        raise ValueError(f"{d} is corrupt: arrays {missing} are missing")
    policy = rebuild(cls, d, meta, params, encoder=encoder)
    for k, v in meta["state"].items():
        setattr(policy, k, v)
    for k, v in arrays.items():
        setattr(policy, k, v)
    policy.models_ = list(meta["models"])
    policy.metrics_ = meta.get("metrics", {})
    return policy
