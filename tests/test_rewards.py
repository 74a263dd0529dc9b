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


def test_format_reward_partial_credit():
    completions = [
        "<route>cheap</route>",  # strict
        "  <route> mistral-7b </route>\n",  # strict: whitespace around and inside the tag
        "Sure! <route>cheap</route>",  # one good tag in other text
        "<route>gpt-5</route>",  # not in the roster
        "<route>cheap</route><route>cheap</route>",  # several tags
        "<route>cheap",  # unclosed
        "cheap",  # no tag
    ]
    assert format_reward(completions, models=[MODELS] * len(completions)) == [
        1.0,
        1.0,
        0.5,
        0.2,
        0.2,
        0.0,
        0.0,
    ]
    # conversational completions (a list of messages) and a single broadcast roster work too
    chat = [
        [{"role": "assistant", "content": "<route>cheap</route>"}],
        [{"role": "assistant", "content": "x"}],
    ]
    assert format_reward(chat, models=MODELS) == [1.0, 0.0]


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
