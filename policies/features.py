"""Prompt features beyond the embedding: length, content category, code and math markers.

Computed only from what a policy is handed at serving time (`PromptBatch`: the prompt text as the
policy views it, the prompt's token estimate, its embedding), so training and serving compute
them the same way: `evaluate.predict` and the gateway pass the policy's view of the text (its
tail) and the whole prompt's token count, and the policy applies `view` to the training texts
before calling `prompt_features` too.

- `log_tokens`: log(1 + prompt tokens) of the whole prompt (few-shot prompts are long).
- `log_chars`: log(1 + characters) of the viewed text (short questions vs long contexts).
- `code_fence`, `code_words`: a fenced block; log(1 + count) of programming keywords and syntax.
- `digits`, `equations`, `latex`: share of digit characters; log(1 + count) of arithmetic or
  comparison between numbers; any LaTeX command or inline `$...$` maths.
- `category:<name>`: the zero-shot content category probabilities of the `category` policy
  (cosine to the centroids of `policies/categories.yaml` examples, softmax at its temperature).

A model's price tier is not here: it is one number per model, so a per-model combiner (the
`ensemble` policy) already has it in its intercept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

CODE_FENCE = re.compile(r"```|~~~")
CODE_WORDS = re.compile(
    r"\b(?:def|class|return|import|elif|lambda|function|const|let|var|void|public|static|"
    r"struct|fn|println|printf|console\.log|SELECT|INSERT|UPDATE|WHERE|JOIN)\b"
    r"|#include|=>|->|::|\+\+|==|!=|\w\(\)|[{};]\s*$",
    re.MULTILINE,
)
EQUATION = re.compile(r"\d\s*(?:[-+*/^=<>×÷]|\*\*)\s*\(?-?\d|[=<>≤≥]\s*-?\d")
LATEX = re.compile(
    r"\\(?:frac|sqrt|sum|int|begin|left|right|cdot|times|alpha|beta|pi|theta|mathbb)\b|\$[^$\n]+\$"
)
MARKERS = ("log_tokens", "log_chars", "code_fence", "code_words", "digits", "equations", "latex")


def marker_features(texts: Sequence[str], tokens: np.ndarray) -> np.ndarray:
    """(n, len(MARKERS)) length and code/math marker features."""
    out = np.zeros((len(texts), len(MARKERS)))
    for i, t in enumerate(texts):
        out[i] = (
            np.log1p(float(tokens[i])),
            np.log1p(len(t)),
            1.0 if CODE_FENCE.search(t) else 0.0,
            np.log1p(len(CODE_WORDS.findall(t))),
            sum(c.isdigit() for c in t) / max(1, len(t)),
            np.log1p(len(EQUATION.findall(t))),
            1.0 if LATEX.search(t) else 0.0,
        )
    return out


def category_centroids(encoder) -> tuple[list[str], np.ndarray]:
    """The `category` policy's default categories and their unit-norm centroids under `encoder`."""
    from policies.category import CategoryPolicy

    cat = CategoryPolicy(encoder=encoder).fit([])
    return list(cat.categories_), np.asarray(cat.centroids_, dtype=np.float32)


def category_proba(embeddings: np.ndarray, centroids: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """(n, n_categories) category probabilities, as `CategoryPolicy.predict_proba` computes them."""
    from scipy.special import softmax

    return softmax(np.asarray(embeddings, dtype=np.float32) @ centroids.T / temperature, axis=1)


def prompt_features(
    texts: Sequence[str],
    tokens: np.ndarray,
    embeddings: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
) -> np.ndarray:
    """Markers, then category probabilities when `embeddings` and `centroids` are given."""
    F = marker_features(texts, tokens)
    if embeddings is None or centroids is None or not len(centroids):
        return F
    return np.concatenate([F, category_proba(embeddings, centroids)], axis=1)


def feature_names(categories: Sequence[str] = ()) -> list[str]:
    return list(MARKERS) + [f"category:{c}" for c in categories]
