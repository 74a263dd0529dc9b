"""Automatic judges: a rating in 0..1 for an answer, without waiting for a user.

- `exact`: the answer equals the reference after SQuAD-style normalisation (case, punctuation,
  articles and whitespace ignored): 1.0 or 0.0.
- `contains`: the normalised reference appears in the normalised answer as whole words (for
  answers that explain around the expected one): 1.0 or 0.0.
- `llm`: a model of the pool grades the answer 0-10 from a fixed rubric. The reply must hold
  exactly one number (a "/10" after it is allowed), of at most two integer digits; it is divided
  by 10 and clamped to 0..1 ("10.5" rates 1.0). Any other reply is no rating (nothing is learned).
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_OUT_OF_TEN = re.compile(r"/\s*10(?![\d.])")

RUBRIC = (
    "You grade answers. Read the user's request and the assistant's answer, then reply with one "
    "integer from 0 (useless or wrong) to 10 (correct, complete and helpful), and nothing else.\n\n"
    "Request:\n{prompt}\n\nAnswer:\n{answer}\n\nGrade (0-10):"
)


def normalize(text: str) -> str:
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def contains(answer: str, reference: str) -> float:
    ref = normalize(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize(answer)} ")


def parse_grade(reply: str) -> float | None:
    """A judge's reply as a rating in 0..1, or None when it is not exactly one grade."""
    numbers = _NUMBER.findall(_OUT_OF_TEN.sub(" ", reply))
    if len(numbers) != 1 or len(numbers[0].partition(".")[0]) > 2:
        return None
    return min(1.0, max(0.0, float(numbers[0]) / 10.0))


def judge_prompt(prompt: str, answer: str, limit: int = 6000) -> str:
    return RUBRIC.format(prompt=prompt[-limit:], answer=answer[-limit:])
