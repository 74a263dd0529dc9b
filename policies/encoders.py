"""`PromptEncoder`: text -> L2-normalised vectors, with an LRU cache and batched encoding.

Separate from the policies that consume the vectors: a policy artifact records the encoder's
`name`, `version` and `build`, and a policy is only served with the encoder it was fitted with.
The torch and ONNX fp32 builds of the bundled MiniLM give the same vectors (cosine >= 0.9999,
tests/test_onnx_encoder.py), so either serves a policy fitted with the other.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from importlib import metadata

import numpy as np

from policies.encoder_files import INT8_RECIPE, INT8_RECIPES, bundled_model_path, wheel_version

BUNDLED = "all-MiniLM-L6-v2"
BUNDLED_ALIASES = {BUNDLED, "sentence-transformers/all-MiniLM-L6-v2", "minilm", "bundled"}
# the fast path; defined here (not imported) so building an encoder stays cheap
STATIC_ALIASES = {"minilm-static", "static", "fast"}
DISTILL_VERSION = "2"
# the bundled MiniLM through ONNX Runtime (policies.onnx_encoder): fp32, and dynamic int8
ONNX_ALIASES = {"minilm-onnx", "onnx"}
ONNX_INT8_ALIASES = {"minilm-onnx-int8", "onnx-int8"}  # the default int8 recipe
INT8_NAMED = re.compile(r"minilm-onnx-int8-r(\d+)")  # any recipe by name (an option, or an artifact's)
DEFAULT = "minilm-onnx-int8"  # its routing quality is fp32's within 0.003 AIQ (docs/benchmarks.md)
# builds whose vectors are the same (to float rounding): a policy fitted with one serves with the other
INTERCHANGEABLE = {"torch": "minilm", "onnx": "minilm"}


def build_family(build: str) -> str:
    return INTERCHANGEABLE.get(build, build)


def int8_recipe(model: str) -> str | None:
    """The int8 recipe `model` names ("minilm-onnx-int8": the default one), None if not int8."""
    if model in ONNX_INT8_ALIASES:
        return INT8_RECIPE
    m = INT8_NAMED.fullmatch(model)
    if m is None:
        return None
    if m.group(1) not in INT8_RECIPES:
        raise ValueError(
            f"encoder {model!r}: this version builds the int8 recipes r{', r'.join(INT8_RECIPES)}, not r{m.group(1)}"
        )
    return m.group(1)


def int8_recipe_of(version: str) -> str | None:
    """The int8 recipe an encoder `version` names (`PromptEncoder.version`: "<wheel>+int8r<N>")."""
    m = re.search(r"\+int8r(\d+)$", version)
    return m.group(1) if m else None


def int8_model(recipe: str) -> str:
    """The `encoder.model` that builds int8 `recipe`."""
    return "minilm-onnx-int8" if recipe == INT8_RECIPE else f"minilm-onnx-int8-r{recipe}"


class PromptEncoder:
    """The routing encoder on CPU, offline.

    `model`: "minilm-onnx" (the bundled all-MiniLM-L6-v2 through ONNX Runtime, fp32),
    "all-MiniLM-L6-v2" (the same weights through torch sentence-transformers; same vectors),
    "minilm-onnx-int8" (the default: ONNX with dynamic int8 quantization, faster, vectors ~0.997 cosine to
    fp32; "minilm-onnx-int8-r3" a faster int8 recipe, ~0.998, an option), "minilm-static" (a static encoder distilled from it: ~100x faster, a little less
    accurate; `policies.static_encoder`), or a local sentence-transformers directory.
    `threads`: ONNX Runtime intra-op threads (default min(2, CPUs)).
    Thread-safe; the model loads on first use (or `load()`)."""

    def __init__(
        self,
        model: str = DEFAULT,
        cache_size: int = 4096,
        batch_size: int = 32,
        device: str = "cpu",
        threads: int | None = None,
    ):
        self.model = model
        self.int8_recipe = int8_recipe(model)  # refuses a recipe this version cannot build
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
        self._st = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def build(self) -> str:
        """How the vectors are computed: "torch", "onnx" (fp32), "onnx-int8" or "static"."""
        if self.model in STATIC_ALIASES:
            return "static"
        if self.model in ONNX_ALIASES:
            return "onnx"
        if self.int8_recipe is not None:
            return "onnx-int8"
        return "torch"

    @property
    def name(self) -> str:
        if self.model in STATIC_ALIASES:
            return "moe-router/minilm-static"
        bundled = self.model in BUNDLED_ALIASES | ONNX_ALIASES or self.int8_recipe is not None
        return "sentence-transformers/all-MiniLM-L6-v2" if bundled else self.model

    @property
    def version(self) -> str:
        wheel = wheel_version()
        if self.model in STATIC_ALIASES:
            return f"{wheel}+static{DISTILL_VERSION}"
        if self.int8_recipe is not None:  # other vectors: an older gateway must refuse them too
            return f"{wheel}+int8r{self.int8_recipe}"
        if self.model in BUNDLED_ALIASES | ONNX_ALIASES:
            return wheel
        return metadata.version("sentence-transformers")

    @property
    def dim(self) -> int:
        return int(self.load().get_embedding_dimension())

    def load(self):
        if self._st is None:
            with self._load_lock:
                if self._st is None:
                    self._st = self._build()
        return self._st

    def _build(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if self.build in ("onnx", "onnx-int8"):  # no torch import unless the export is not cached yet
            from policies.onnx_encoder import OnnxModel
            from policies.onnx_export import ensure

            int8 = self.int8_recipe is not None
            path = ensure(bundled_model_path(), wheel_version(), int8, self.int8_recipe or INT8_RECIPE)
            return OnnxModel(path, bundled_model_path(), self.threads, one_thread_singles=int8)
        if self.build == "static":  # torch and transformers only to distill, once
            from policies.static_encoder import load_static

            return load_static(bundled_model_path(), self.version)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        from sentence_transformers import SentenceTransformer

        path = bundled_model_path() if self.model in BUNDLED_ALIASES else self.model
        return SentenceTransformer(path, device=self.device)

    @property
    def inline(self) -> bool:
        """Cheap enough to run on the caller's event loop: the static encoder once loaded (a
        tokenizer call and a lookup per token, ~0.2 ms for 200 characters; its first load may
        distill it, a minute). The others take milliseconds and run on a worker thread."""
        return self.build == "static" and self._st is not None

    def cached(self, text: str) -> np.ndarray | None:
        """`text`'s vector if the cache holds it (a lookup, no encoding), else None."""
        with self._lock:
            v = self._cache.get(text)
            if v is not None:
                self._cache.move_to_end(text)
            return v

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, unit-norm rows. Cached texts are not re-encoded."""
        texts = list(texts)
        out: list[np.ndarray | None] = [None] * len(texts)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, t in enumerate(texts):
                v = self._cache.get(t)
                if v is None:
                    missing.setdefault(t, []).append(i)
                else:
                    self._cache.move_to_end(t)
                    out[i] = v
        if missing:
            todo = list(missing)
            vecs = (
                self.load()
                .encode(
                    todo,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=show_progress,
                )
                .astype(np.float32)
            )
            with self._lock:
                for t, v in zip(todo, vecs, strict=True):
                    for i in missing[t]:
                        out[i] = v
                    if self.cache_size:
                        self._cache[t] = v
                        self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(out)


class UnloadedEncoder(PromptEncoder):
    """`PromptEncoder(model)`'s identity (name, version, build: what policy artifacts are checked
    against) whose model is never loaded: its files are looked for, and every text encodes to one
    fixed unit vector. It builds policies to check a config (`moe-router config validate`), where no
    vector is used and loading the model (an ONNX session, or torch) costs seconds."""

    def _build(self):
        if self.build == "torch" and self.model not in BUNDLED_ALIASES:  # a directory, or a hub name
            if not os.path.isdir(self.model):
                return super()._build()  # from the local hub cache (offline): only loading finds it
        elif not os.path.isfile(os.path.join(bundled_model_path(), "tokenizer.json")):
            raise OSError(f"encoder {self.model!r}: the bundled model has no tokenizer.json")
        return _FixedVectors()


class _FixedVectors:
    """What `UnloadedEncoder` loads: the same unit vector for every text."""

    DIM = 384  # all-MiniLM-L6-v2's (only the shape matters: nothing routes with these)

    def get_embedding_dimension(self) -> int:
        return self.DIM

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        out = np.zeros((len(texts), self.DIM), np.float32)
        out[:, 0] = 1.0
        return out
