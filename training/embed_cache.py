"""On-disk cache of prompt embeddings, so `compare` and the benchmark embed each prompt once.

Keyed by (encoder name, encoder version, build unless torch, SHA-256 of the exact text the encoder
sees): the ONNX fp32 build has its own vectors on disk, so a benchmark of it measures it. Stored
under `$MOE_ROUTER_CACHE_DIR` (default `~/.cache/moe-router`) in `embeddings/<encoder>/` as
safetensors shards: one per batch of new texts, each holding the text hashes and the vectors.
Safe to delete at any time. (Not `MOE_ROUTER_CACHE`: the gateway's settings read that name as
their `cache` section.)
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from policies.encoder_files import cache_root


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class EmbeddingCache:
    def __init__(self, encoder, root: str | Path | None = None, chunk: int = 512):
        self.encoder = encoder
        build = getattr(encoder, "build", "torch")
        key = f"{encoder.name}@{encoder.version}" + ("" if build == "torch" else f"@{build}")
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
        self.dir = Path(root or cache_root()) / "embeddings" / safe
        self.chunk = chunk
        self._index: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            self._index = {}
            for f in sorted(self.dir.glob("*.safetensors")) if self.dir.exists() else []:
                try:
                    d = load_file(str(f))
                except (SafetensorError, OSError, ValueError):
                    continue  # a torn write: ignore the shard, its texts get re-embedded
                for k, v in zip(d["keys"], d["vecs"], strict=True):
                    self._index[k.tobytes()] = v
        return self._index

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from safetensors.numpy import save_file
        from tqdm import tqdm

        index = self._load()
        keys = [_digest(t) for t in texts]
        todo: dict[bytes, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in index:
                todo.setdefault(k, t)
        if todo:
            self.dir.mkdir(parents=True, exist_ok=True)
            items = list(todo.items())
            bar = tqdm(
                total=len(items), desc=f"embedding ({self.encoder.name})", unit="prompt", disable=not progress
            )
            for s in range(0, len(items), self.chunk):
                part = items[s : s + self.chunk]
                vecs = np.asarray(self.encoder.encode([t for _, t in part]), dtype=np.float32)
                ks = np.stack([np.frombuffer(k, dtype=np.uint8) for k, _ in part])
                tmp = self.dir / f".{uuid.uuid4().hex}.tmp"
                save_file({"keys": ks, "vecs": vecs}, str(tmp))
                tmp.rename(self.dir / f"{uuid.uuid4().hex}.safetensors")
                for (k, _), v in zip(part, vecs, strict=True):
                    index[k] = v
                bar.update(len(part))
            bar.close()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([index[k] for k in keys])


def embed_for(
    policy, texts: Sequence[str], encoder, cache: bool = True, progress: bool = False
) -> np.ndarray:
    """Embeddings of `texts` as `policy` sees them (its text view), through the disk cache."""
    view = policy.view(list(texts)) if hasattr(policy, "view") else list(texts)
    if not cache:
        return np.asarray(encoder.encode(view), dtype=np.float32)
    return EmbeddingCache(encoder).encode(view, progress=progress)
