"""What some policies can do beyond `Policy`'s estimator methods, declared as protocols (as
RouteLLM's routers declare their one method): the gateway and `policies.artifacts` ask
`implements(policy, Protocol)` instead of probing attribute names.

A capability belongs to a policy's class, so `implements` answers once per class (an
`isinstance` against a runtime protocol looks up every member, microseconds a call, and the
planner asks on every request). A wrapper that forwards attributes (router/mapped_policy.py)
has exactly the capabilities its class declares.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from policies.base import Policy, PromptBatch

if TYPE_CHECKING:
    from policies.cascade import CascadePlan


@runtime_checkable
class CascadeRouter(Protocol):
    """Two steps: a cheap model answers, and a scorer decides whether to ask the strong one."""

    def cascade_plan(self, batch: PromptBatch) -> list[CascadePlan]:
        """Per prompt, the models of each step and the escalation threshold."""
        ...

    def should_escalate(self, prompt: str, answer: str | None, second: str | None = None) -> bool:
        """Whether the first model's `answer` is likely not good enough (ask the strong one)."""
        ...


@runtime_checkable
class OnlineRouter(Protocol):
    """Learns from ratings while serving and chooses at random with known probabilities (the
    probability of its choice is logged for off-policy evaluation)."""

    def contexts(self, batch: PromptBatch) -> np.ndarray:
        """(n, dim) context vectors: what a rating is learned against."""
        ...

    def prior_quality(self, batch: PromptBatch) -> np.ndarray:
        """(n, models) quality before any rating: ratings teach the residual from it."""
        ...

    def update(self, model: str, x: np.ndarray, y: float, sign: float = 1.0) -> None:
        """Add (sign 1) or take back (sign -1) one rating's residual `y` at context `x`."""
        ...

    def action_probabilities(
        self, batch: PromptBatch, cost: np.ndarray, eligible: np.ndarray, cost_weight: float
    ) -> np.ndarray:
        """(models,) the probability of choosing each model for the first prompt of `batch`."""
        ...

    def sample_arm(self, probs: np.ndarray) -> int:
        """A model's index drawn from `probs`."""
        ...


@runtime_checkable
class LoadsItself(Protocol):
    """A policy whose artifact has a layout of its own (the fine-tuned LLM router's model files)."""

    @classmethod
    def load_artifact(cls, directory: str | Path, meta: dict[str, Any], **params: Any) -> Policy:
        """The fitted policy from `directory` (`meta`: its policy.json)."""
        ...


@runtime_checkable
class OwnEncoder(Protocol):
    """A policy that embeds prompts with an encoder it fine-tuned, saved in and loaded from its
    artifact (never the gateway's shared encoder)."""

    def save_encoder(self, directory: Path) -> Any:
        """Write the encoder into the artifact `directory`; returns it."""
        ...

    @classmethod
    def load_encoder(cls, directory: Path, meta: dict[str, Any]) -> Any:
        """The artifact's encoder, checked against what `meta` recorded."""
        ...


def implements(policy: Any, capability: type) -> bool:
    """`isinstance(policy, capability)` for a capability protocol above, answered per class;
    `policy` may also be a policy class."""
    return _class_implements(policy if isinstance(policy, type) else type(policy), capability)


@functools.cache
def _class_implements(cls: type, capability: type) -> bool:
    return issubclass(cls, capability)
