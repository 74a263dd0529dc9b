"""A tiny random causal LM that already knows the LLM router's answer *format*, for tests and the
CPU benchmark: a 2-layer Llama with a word-level tokenizer built from the task's own prompts.

A few supervised steps teach it to answer `<route>name</route>` with the roster's names drawn
equally often (what an instruct model brings from its own training); which model to name is left
for GRPO to learn. Words outside the task's prompts read as [UNK].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from policies.base import ModelInfo


def build_tiny_router_lm(
    directory: Path,
    texts: Sequence[str],
    roster: Sequence[ModelInfo],
    max_prompt_chars: int = 80,
    warm_steps: int = 40,
    hidden: int = 32,
    seed: int = 0,
) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from policies.llm_router import render_prompt

    names = [m.name for m in roster]
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words: set[str] = set()
    for t in [*texts, *names]:  # no chat template: render_prompt gives the plain-text layout
        words.update(w for w, _ in pre.pre_tokenize_str(render_prompt(None, t, roster, max_prompt_chars)))
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    tok.add_tokens(["<route>", "</route>"])  # whole tokens, kept when decoding
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(warm_steps):
        ids, labels = [], []
        for k in range(8):
            p = tok(render_prompt(tok, texts[rng.integers(len(texts))], roster, max_prompt_chars))[
                "input_ids"
            ]
            c = tok(f"<route>{names[k % len(names)]}</route>", add_special_tokens=False)["input_ids"]
            c = c + [tok.eos_token_id]
            ids.append(p + c)
            labels.append([-100] * len(p) + c)
        width = max(map(len, ids))
        x = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
        y = torch.tensor([[-100] * (width - len(i)) + i for i in labels])
        mask = (x != tok.pad_token_id).long()
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
