"""What a cascade reads in a model's answer: the final answer it states, and cheap signs of doubt.

- `extract_answer`: the answer a reply commits to, normalised so two models' replies compare:
  a choice letter ("C", "(C)", "The answer is C") or a final number ("#### 1,200" -> "1200",
  "$18.00" -> "18"; else the last number in the text). None when it states neither.
- `answer_features`: a fixed-length vector of features of (prompt, answer[, second answer]) that
  an embedding misses: whether a final answer is stated (and how: GSM8K's `####` marker), its
  value, the reply's length and number of reasoning steps, whether its calculator annotations
  (`<<48/2=24>>`) are arithmetically right, how many of the prompt's numbers it uses, whether the
  final number closes the reasoning, hedging words, and, with a second model's reply, whether
  the two state the same answer (agreement of two cheap models: self-consistency across models).

Pure Python: the gateway computes the same features when it serves a cascade.
"""

from __future__ import annotations

import ast
import math
import operator
import re

NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_FINAL = re.compile(r"####\s*(" + NUMBER + ")")
_SAYS = re.compile(r"answer\s*(?:is|:)\s*\(?(" + NUMBER + r"|[A-E]\b)", re.IGNORECASE)
_LETTER = re.compile(r"^\W*\(?([A-E])\)?(?:[.:)]|\s*$)")
_CALC = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
MAX_CALC_EXPR = 200  # characters: GSM8K's annotations are a few dozen (<<48/2=24>>)
HEDGES = (
    "however",
    "actually",
    "approximately",
    "round",
    "assum",
    "not possible",
    "cannot",
    "can't",
    "not sure",
    "unclear",
    "sorry",
    "wait",
    "impossible",
)
FEATURES = (
    "answered",
    "marker",
    "log_length",
    "empty",
    "steps",
    "calc_errors",
    "calc_count",
    "prompt_numbers_used",
    "integer",
    "log_value",
    "negative",
    "final_in_prompt",
    "final_closes_reasoning",
    "hedges",
    "steps_per_prompt_number",
    "prompt_numbers",
    "agree",
    "second_answered",
)
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}


def _number(s: str) -> float | None:
    try:
        return float(s.replace("$", "").replace(",", ""))
    except ValueError:
        return None


def _canonical(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def numbers(text: str | None) -> list[float]:
    return [x for x in (_number(s) for s in re.findall(NUMBER, text or "")) if x is not None]


def extract_answer(text: str | None) -> str | None:
    """The final answer a reply states (a letter A-E or a canonical number), else None."""
    t = (text or "").strip()
    if not t:
        return None
    for pattern in (_FINAL, _SAYS, _LETTER):
        m = pattern.search(t)
        if m:
            g = m.group(1)
            x = None if g.isalpha() else _number(g)
            return g.upper() if x is None else _canonical(x)
    xs = numbers(t)
    return _canonical(xs[-1]) if xs else None


def _arith(node: ast.AST) -> float:
    """Value of a plain arithmetic expression (numbers and + - * / ** % //), nothing else."""
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return float(_OPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _arith(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not arithmetic")


def calc_errors(text: str | None) -> tuple[int, int]:
    """(wrong, total) calculator annotations `<<expr=value>>` in a reply. The reply is a model's
    text (served cascades read it on the request path): an expression longer than `MAX_CALC_EXPR`
    is not a calculator's and counts as wrong unparsed; Python's parser raises MemoryError on
    deep nesting ("-" * 10**5), which counts as wrong too."""
    wrong = total = 0
    for expr, value in _CALC.findall(text or ""):
        total += 1
        want = _number(value.strip())
        if len(expr) > MAX_CALC_EXPR:
            wrong += 1
            continue
        try:
            got = _arith(ast.parse(expr.replace(",", "").replace("$", "").strip(), mode="eval"))
            wrong += want is None or abs(got - want) > 1e-6 * max(1.0, abs(got))
        except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, RecursionError, MemoryError):
            wrong += 1
    return wrong, total


def answer_features(prompt: str, answer: str | None, second: str | None = None) -> list[float]:
    """Features of one reply (see FEATURES for their order); `second`: another model's reply."""
    a = answer or ""
    low = a.lower()
    final = extract_answer(a)
    value = _number(final) if final and not final.isalpha() else None
    prompt_nums = set(numbers(prompt))
    used = len(prompt_nums & set(numbers(a))) / len(prompt_nums) if prompt_nums else 1.0
    wrong, total = calc_errors(a)
    steps = a.count("=")
    reasoning = a.split("####")[0].strip()
    closes = final is not None and final in reasoning[-120:].replace(",", "").replace("$", "")
    other = extract_answer(second) if second is not None else None
    return [
        float(final is not None),
        float("####" in a),
        math.log1p(len(a)) / 8,
        float(not a.strip()),
        min(steps, 20) / 10,
        float(wrong > 0),
        min(total, 20) / 10,
        used,
        float(value is not None and value.is_integer()),
        0.0 if value is None else math.log10(1 + min(abs(value), 1e12)) / 4,
        float(value is not None and value < 0),
        float(value is not None and value in prompt_nums),
        float(closes),
        float(sum(h in low for h in HEDGES)),
        steps / (1 + len(prompt_nums)) / 5,
        min(len(prompt_nums), 20) / 10,
        float(final is not None and final == other),
        float(other is not None),
    ]
