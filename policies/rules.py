"""Rules from config: keyword / regex / prompt-length matches that raise a model's predicted quality.

A rule says "prompts like this are best answered by model M". It sets M's predicted quality to
the rule's `quality` (default 1.0) for matching prompts; every other prediction stays at the
catalogue prior. Because the shared decision function still applies constraints, a rule's model
that is too expensive or down is skipped and the next-best model is used.

    rules:
      - {name: code, keywords: [python, function, bug], model: gpt-4o}
      - {name: short, max_tokens: 12, model: smollm2}
      - {name: sql, regex: "(?i)\\bselect\\b.+\\bfrom\\b", model: gpt-4o-mini, quality: 0.9}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from policies.base import ModelInfo, PriorPolicy, PromptBatch


@dataclass(frozen=True)
class Rule:
    model: str
    name: str = ""
    keywords: tuple[str, ...] = ()
    regex: str | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    quality: float = 1.0
    _pattern: re.Pattern | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: dict) -> Rule:
        unknown = set(raw) - {"model", "name", "keywords", "regex", "min_tokens", "max_tokens", "quality"}
        if unknown:
            raise ValueError(f"rule {raw.get('name', raw)!r}: unknown field(s) {sorted(unknown)}")
        if "model" not in raw:
            raise ValueError(f"rule {raw.get('name', raw)!r}: 'model' is required")
        kw = tuple(str(k).lower() for k in raw.get("keywords", ()))
        pattern = None
        if raw.get("regex"):
            try:
                pattern = re.compile(raw["regex"])
            except re.error as e:
                raise ValueError(f"rule {raw.get('name', raw['model'])!r}: bad regex: {e}") from None
        rule = cls(
            model=raw["model"],
            name=raw.get("name", ""),
            keywords=kw,
            regex=raw.get("regex"),
            min_tokens=raw.get("min_tokens"),
            max_tokens=raw.get("max_tokens"),
            quality=float(raw.get("quality", 1.0)),
        )
        object.__setattr__(rule, "_pattern", pattern)
        if not (kw or pattern or rule.min_tokens is not None or rule.max_tokens is not None):
            raise ValueError(
                f"rule {rule.name or rule.model!r} matches nothing: give keywords, regex or a length"
            )
        return rule

    def matches(self, text: str, tokens: float) -> bool:
        if self.min_tokens is not None and tokens < self.min_tokens:
            return False
        if self.max_tokens is not None and tokens > self.max_tokens:
            return False
        if self.keywords:
            words = set(re.findall(r"[\w+#.-]+", text.lower()))
            if not any(k in words or (" " in k and k in text.lower()) for k in self.keywords):
                return False
        return not (self._pattern is not None and not self._pattern.search(text))


class RulesPolicy(PriorPolicy):
    name = "rules"

    def __init__(self, rules: Sequence[dict] = ()):
        self.rules = list(rules)

    def fit(self, catalog: Sequence[ModelInfo]) -> RulesPolicy:
        super().fit(catalog)
        self.rules_ = [Rule.parse(r) for r in self.rules]
        for r in self.rules_:
            if r.model not in self.models_:
                raise ValueError(f"rule {r.name or r.model!r} names unknown model {r.model!r}")
        return self

    def predict_quality(self, batch: PromptBatch) -> np.ndarray:
        self._check_fitted()
        q = self._prior_matrix(len(batch))
        col = {m: j for j, m in enumerate(self.models_)}
        for i, (text, tokens) in enumerate(zip(batch.texts, batch.tokens(), strict=True)):
            for r in self.rules_:
                if r.matches(text, tokens):
                    q[i, col[r.model]] = max(q[i, col[r.model]], r.quality)
        return q
