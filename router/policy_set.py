"""The named policies a gateway serves: built-in baselines plus those in `routing.policies`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

from policies.base import ModelInfo, Policy, PriorPolicy
from policies.encoders import DEFAULT, PromptEncoder, UnloadedEncoder
from policies.registry import policy_class
from router.config import ModelSpec, PolicySpec, RouterConfig
from router.mapped_policy import mapped

# the zero-shot category policy matches prompts to its example descriptions; through the static
# encoder's vectors that misclassifies (docs/learned-policies.md, "Fast encoder")
STATIC_CATEGORY = (
    "routing.default_policy 'category' (zero-shot) classifies prompts poorly with encoder.model "
    "minilm-static (none of HumanEval's code prompts went to 'code', 71% with MiniLM); make the "
    "default a policy fitted with it: moe-router train ... --encoder minilm-static"
)
BUILTIN = ("category", "irt", "cheapest", "strongest", "random", "rules", "linucb", "thompson")


class PolicyError(ValueError):
    """A configured policy cannot be built or does not fit this gateway's model pool."""


def model_info(spec: ModelSpec) -> ModelInfo:
    """What policies know of a configured model."""
    return ModelInfo(
        name=spec.name,
        input_price_per_1m=spec.input_price_per_1m,
        output_price_per_1m=spec.output_price_per_1m,
        quality=dict(spec.quality),
        latency_ms=spec.latency_ms,
        description=spec.description,
        cached_input_price_per_1m=spec.cached_input_price(),
        benchmarks=dict(spec.benchmarks),
    )


def encoder_model(config: RouterConfig) -> str:
    """`encoder.model`, or when unset the one every configured artifact was fitted with (so
    artifacts keep serving with the vectors they were fitted on), else the default build."""
    if config.encoder.model:
        return config.encoder.model
    from policies.artifacts import fitted_encoder

    artifacts = [p.artifact for p in config.routing.policies.values() if p.artifact]
    fitted = {fitted_encoder(a) for a in artifacts} - {None}
    return fitted.pop() if len(fitted) == 1 else DEFAULT


def build_encoder(config: RouterConfig, unloaded: bool = False) -> PromptEncoder:
    """The routing encoder `config` asks for (not loaded yet). `unloaded`: one that never loads its
    model (`UnloadedEncoder`: policies built with it are checked, not served)."""
    enc = config.encoder
    cls = UnloadedEncoder if unloaded else PromptEncoder
    return cls(encoder_model(config), cache_size=enc.cache_size, threads=enc.threads)


def build_policy(
    name: str,
    spec: PolicySpec,
    catalog: Sequence[ModelInfo],
    encoder: PromptEncoder,
    warnings: list[str] | None = None,
    abilities_file: Path | None = None,
    categories: dict | None = None,
) -> Policy:
    """The policy `spec` describes. An artifact model with no pool model (after `model_map`) is
    appended to `warnings` and not routed to; an artifact with none in the pool is refused.
    A pool-agnostic policy (`irt`: `attach_pool`) serves every pool model instead, from the
    wheel's pretrained artifact when `spec` names none."""
    if _pool_agnostic(spec):
        from policies.artifacts import load_policy
        from policies.irt import shipped_artifact

        artifact = spec.artifact or str(shipped_artifact())
        try:
            policy = mapped(load_policy(artifact, encoder=encoder, **spec.params), spec.model_map)
            return policy.attach_pool(catalog, abilities_file, categories)
        except (OSError, ValueError) as e:
            raise PolicyError(f"policy {name!r}: cannot load artifact {artifact}: {e}") from None
    if spec.artifact:
        from policies.artifacts import load_policy  # learned policies: the artifact holds the fitted state

        try:
            policy = mapped(load_policy(spec.artifact, encoder=encoder, **spec.params), spec.model_map)
        except (OSError, ValueError) as e:
            raise PolicyError(f"policy {name!r}: cannot load artifact {spec.artifact}: {e}") from None
        pool = {m.name for m in catalog}
        unknown = [m for m in policy.models_ if m not in pool]
        if len(unknown) == len(policy.models_):
            raise PolicyError(
                f"policy {name!r}: artifact {spec.artifact} scores models not in this gateway's pool: "
                f"{unknown}; rename them with model_map (artifact name: pool name)"
            )
        if unknown and warnings is not None:
            warnings.append(
                f"policy {name!r}: artifact models {unknown} have no pool model (add them to model_map); "
                f"it routes among {[m for m in policy.models_ if m in pool]}"
            )
        return policy
    try:
        cls = policy_class(spec.type)
        params = dict(spec.params)
        accepts = inspect.signature(cls.__init__).parameters
        if "encoder" in accepts:
            params["encoder"] = encoder
        if "abilities_file" in accepts and abilities_file is not None and params.get("warm_start"):
            params.setdefault("abilities_file", str(abilities_file))
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


def _pool_agnostic(spec: PolicySpec) -> bool:
    """An `irt` policy (by type: the wheel's artifact; or an irt artifact): it serves any pool."""
    if spec.type:
        return spec.type == "irt"
    from policies.artifacts import read_metadata

    try:
        return read_metadata(spec.artifact)["type"] == "irt"
    except (OSError, ValueError):
        return False  # load_policy below says what is wrong with it


class PolicySet:
    def __init__(self, config: RouterConfig, encoder: PromptEncoder):
        catalog = [model_info(m) for m in config.chat_models()]
        specs: dict[str, PolicySpec] = {n: PolicySpec(type=n) for n in BUILTIN}
        if config.routing.categories:
            specs["category"] = PolicySpec(type="category", params={"categories": config.routing.categories})
        specs.update(config.routing.policies)
        # what start-up and `config validate` report: artifact models this pool does not serve
        self.warnings: list[str] = []
        abilities = config.routing.abilities_path()
        cats = config.routing.categories
        self._policies = {}
        for n, s in specs.items():
            try:
                self._policies[n] = build_policy(n, s, catalog, encoder, self.warnings, abilities, cats)
            except PolicyError as e:
                # the built-in irt needs the encoder its pretrained artifact was fitted with: with
                # another one it is left out (a default irt falls back to category, said at start)
                if n in config.routing.policies or n != "irt":
                    raise
                if config.routing.default_policy == "irt":
                    self.warnings.append(f"{e}; routing.default_policy irt falls back to category")
        default = config.routing.default_policy
        if default == "irt" and "irt" not in self._policies:
            default = "category"
        if default not in self._policies:
            raise PolicyError(
                f"routing.default_policy {config.routing.default_policy!r} is not a known policy: {self.names}"
            )
        self.default = default
        if self.default == "category" and encoder.build == "static":
            self.warnings.append(STATIC_CATEGORY)

    @property
    def names(self) -> list[str]:
        return sorted(self._policies)

    def get(self, name: str) -> Policy | None:
        return self._policies.get(name)

    def items(self):
        return self._policies.items()
