"""The named policies a gateway serves: built-in baselines plus those in `routing.policies`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from policies.base import ModelInfo, Policy, PriorPolicy
from policies.encoders import PromptEncoder
from policies.registry import policy_class
from router.config import PolicySpec, RouterConfig

BUILTIN = ("category", "cheapest", "strongest", "random", "rules", "linucb", "thompson")


class PolicyError(ValueError):
    """A configured policy cannot be built or does not fit this gateway's model pool."""


def build_policy(name: str, spec: PolicySpec, catalog: Sequence[ModelInfo], encoder: PromptEncoder) -> Policy:
    if spec.artifact:
        from policies.artifacts import load_policy  # learned policies: the artifact holds the fitted state

        try:
            policy = load_policy(spec.artifact, encoder=encoder, **spec.params)
        except (OSError, ValueError) as e:
            raise PolicyError(f"policy {name!r}: cannot load artifact {spec.artifact}: {e}") from None
        unknown = sorted(set(policy.models_) - {m.name for m in catalog})
        if unknown:
            raise PolicyError(
                f"policy {name!r}: artifact {spec.artifact} scores models not in this gateway's pool: {unknown}"
            )
        return policy
    try:
        cls = policy_class(spec.type)
        params = dict(spec.params)
        if "encoder" in inspect.signature(cls.__init__).parameters:
            params["encoder"] = encoder
        policy = cls(**params)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"policy {name!r}: {e}") from None
    if isinstance(policy, PriorPolicy):
        try:
            policy.fit(catalog)
        except (OSError, ValueError) as e:
            raise PolicyError(f"policy {name!r}: {e}") from None
    elif not policy.fitted:
        raise PolicyError(
            f"policy {name!r}: type {spec.type!r} learns from data; configure it with 'artifact:'"
        )
    return policy


class PolicySet:
    def __init__(self, config: RouterConfig, encoder: PromptEncoder):
        catalog = [m.info() for m in config.chat_models()]
        specs: dict[str, PolicySpec] = {n: PolicySpec(type=n) for n in BUILTIN}
        if config.routing.categories:
            specs["category"] = PolicySpec(type="category", params={"categories": config.routing.categories})
        specs.update(config.routing.policies)
        self._policies = {n: build_policy(n, s, catalog, encoder) for n, s in specs.items()}
        if config.routing.default_policy not in self._policies:
            raise PolicyError(
                f"routing.default_policy {config.routing.default_policy!r} is not a known policy: {self.names}"
            )
        self.default = config.routing.default_policy

    @property
    def names(self) -> list[str]:
        return sorted(self._policies)

    def get(self, name: str) -> Policy | None:
        return self._policies.get(name)

    def items(self):
        return self._policies.items()
