"""The GRPO routing rewards, each on hand-made completions (no model, no trainer)."""

from __future__ import annotations

import functools

import pytest

from training.rewards import cost_penalty, format_reward, outcome_reward, parse_route

MODELS = ["gpt-4-1106-preview", "mistral-7b", "cheap"]
# one row per completion, as trl passes dataset columns
ROSTERS = [MODELS] * 3


def test_parse_route_reads_the_first_tag_and_ignores_spacing_and_case():
    assert parse_route("<route>mistral-7b</route>", MODELS) == "mistral-7b"
    # word-piece tokenizers decode "gpt-4" as "gpt - 4" and may lower-case
    assert parse_route("<route> GPT - 4 - 1106 - preview </route>", MODELS) == "gpt-4-1106-preview"
    assert parse_route("I pick <route>cheap</route> then <route>mistral-7b</route>", MODELS) == "cheap"
    assert parse_route("<route>gpt-5</route>", MODELS) is None
    assert parse_route("<route>cheap", MODELS) is None
    assert parse_route("cheap", MODELS) is None
    assert parse_route("", MODELS) is None


def test_format_reward_pays_only_for_exactly_one_roster_name():
    completions = [
        "<route>cheap</route>",  # strict
        "  <route> mistral-7b </route>\n",  # strict: whitespace around and inside the tag
        "Sure! <route>cheap</route>",  # a good tag in other text
        "<route>gpt-5</route>",  # not in the roster
        "<route>cheap</route><route>cheap</route>",  # several tags
        "<route>cheap",  # unclosed
        "cheap",  # no tag
    ]
    assert format_reward(completions, models=[MODELS] * len(completions)) == [1.0, 1.0] + [0.0] * 5
    # conversational completions (a list of messages) and a single broadcast roster work too
    chat = [
        [{"role": "assistant", "content": "<route>cheap</route>"}],
        [{"role": "assistant", "content": "x"}],
    ]
    assert format_reward(chat, models=MODELS) == [1.0, 0.0]


def test_the_instruction_echo_that_hacked_the_old_reward_scores_zero():
    """Issue 13: on an H100 every sampled answer became the instruction's own text, which earned
    format credit for a tag naming no model. Nothing about it may pay now."""
    echo = "Reply with <route>model-name</route>"
    echoes = [echo, echo + " and nothing else.", "<route>model-name</route>"]
    n = len(echoes)
    kw = {"models": [MODELS] * n, "quality": [[0.9, 0.4, 0.1]] * n, "cost": [[0.01, 0.001, 0.0002]] * n}
    assert format_reward(echoes, **kw) == [0.0] * n
    assert outcome_reward(echoes, **kw) == [0.0] * n
    assert cost_penalty(echoes, **kw) == [0.0] * n
    # so the total for routing anywhere beats it: the worst roster answer still earns format 1.0
    worst = "<route>cheap</route>"
    total = sum(f([worst], **{k: v[:1] for k, v in kw.items()})[0] for f in (format_reward, outcome_reward))
    assert total > 1.0


def test_outcome_reward_is_the_chosen_models_quality_and_zero_when_unknown():
    quality = [[0.9, 0.4, None], [0.9, 0.4, None], [0.9, 0.4, None], [0.9, 0.4, None]]
    completions = [
        "<route>gpt-4-1106-preview</route>",
        "blah <route>mistral-7b</route>",  # parseable: the outcome does not judge the format
        "<route>cheap</route>",  # masked cell: unknown quality is 0, never a guess
        "no idea",
    ]
    assert outcome_reward(completions, models=[MODELS] * 4, quality=quality) == [0.9, 0.4, 0.0, 0.0]


def test_cost_penalty_is_relative_to_the_dearest_model():
    cost = [[0.01, 0.001, 0.0002]] * 4
    completions = [
        "<route>gpt-4-1106-preview</route>",
        "<route>mistral-7b</route>",
        "<route>cheap</route>",
        "?",
    ]
    got = cost_penalty(completions, models=[MODELS] * 4, cost=cost, cost_lambda=0.5)
    assert got == pytest.approx([-0.5, -0.05, -0.01, 0.0])
    # bound as trl gets it: a partial keeps the function's name (the logged metric's name)
    bound = functools.partial(cost_penalty, cost_lambda=0.2)
    assert bound(completions[:1], models=[MODELS], cost=cost[:1]) == pytest.approx([-0.2])
    # unknown costs: no penalty rather than a made-up one
    assert cost_penalty(completions[:1], models=[MODELS], cost=[[None, 0.001, 0.0002]]) == [0.0]


def test_second_round_cost_pays_for_both_calls_unless_the_first_answer_is_kept():
    cost = [[0.01, 0.001, 0.0002]] * 4
    completions = [
        "<route>cheap</route>",  # keeps the first answer (cheap was asked first)
        "<route>gpt-4-1106-preview</route>",  # asks gpt-4 after cheap: both calls
        "<route>mistral-7b</route>",  # a first round (no first model)
        "?",  # nothing chosen: no cost, format_reward scores it
    ]
    first = ["cheap", "cheap", None, "cheap"]
    got = cost_penalty(completions, models=[MODELS] * 4, cost=cost, cost_lambda=1.0, first=first)
    assert got == pytest.approx([-0.02, -1.02, -0.1, 0.0])
    # the outcome is the final answer's quality: the kept one, or the second model's
    quality = [[0.9, 0.4, 0.0]] * 4
    assert outcome_reward(completions, models=[MODELS] * 4, quality=quality, first=first) == [
        0.0,
        0.9,
        0.4,
        0.0,
    ]
