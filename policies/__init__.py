"""Routing policies: estimators that predict, per prompt and candidate model, quality, cost and latency."""

from policies.base import ModelInfo, Policy, PriorPolicy, PromptBatch
from policies.decision import Candidate, Constraints, Decision, Exclusion, choose, decide
from policies.registry import POLICIES, policy_class

__all__ = [
    "POLICIES",
    "Candidate",
    "Constraints",
    "Decision",
    "Exclusion",
    "ModelInfo",
    "Policy",
    "PriorPolicy",
    "PromptBatch",
    "choose",
    "decide",
    "policy_class",
]
