"""Constrained decoding for the LLM router: the answer can only be `<route>` + a roster name +
`</route>` + end of sequence, and non-finite logits cannot crash sampling.

`RouteTrie` is a prefix tree over the token ids of every allowed answer (each tokenised whole,
as the warm start teaches it); `RouteConstraint` is a transformers `LogitsProcessor` that, at each
step, replaces NaN/inf logits with finite values (a bf16 forward pass can overflow; sampling from
non-finite probabilities is a CUDA device-side assert) and masks every token the trie does not
allow after what the row has generated so far. The same processor constrains GRPO's sampling
(`training.llm_router`) and the serving policy's greedy decoding (`policies.llm_router`), so the
LM never spends reward, or a request, on an answer that names no model: RL is left with the
choice alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ANSWER = "<route>{}</route>"


class RouteTrie:
    """Token-id prefix tree of the allowed answers `<route>name</route>` + EOS."""

    def __init__(self, tokenizer: Any, names: Sequence[str]):
        if tokenizer.eos_token_id is None:
            raise ValueError("the router LM's tokenizer has no EOS token: the answer could not end")
        self.eos = int(tokenizer.eos_token_id)
        self.answers = {
            name: [*tokenizer(ANSWER.format(name), add_special_tokens=False)["input_ids"], self.eos]
            for name in names
        }
        self.root: dict[int, dict] = {}
        for ids in self.answers.values():
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})
        self.max_len = max(map(len, self.answers.values()))

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Token ids that may follow `prefix` (the tokens generated so far). After a complete
        answer (or for a row that left the trie) only EOS: generate pads finished rows anyway."""
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return [self.eos]
        return list(node) or [self.eos]


class RouteConstraint:
    """A transformers LogitsProcessor (duck-typed: `__call__(input_ids, scores)`). Make one per
    `generate` call: the first call records the prompt length (prompts are left-padded, so every
    row's answer starts there)."""

    def __init__(self, trie: RouteTrie):
        self.trie = trie
        self.start: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
        big = torch.finfo(scores.dtype).max / 2
        # NaN -> 0 and +-inf -> +-big *before* masking: a NaN row stays uniform over its
        # allowed tokens rather than leaking probability to forbidden ones
        scores = torch.nan_to_num(scores, nan=0.0, posinf=big, neginf=-big)
        mask = torch.ones_like(scores, dtype=torch.bool)
        for row, ids in enumerate(input_ids[:, self.start :].tolist()):
            mask[row, self.trie.allowed(ids)] = False
        return scores.masked_fill(mask, float("-inf"))


def logits_processors(trie: RouteTrie) -> Any:
    """A fresh `LogitsProcessorList` (for one `generate` call) holding one `RouteConstraint`."""
    from transformers import LogitsProcessorList

    return LogitsProcessorList([RouteConstraint(trie)])
