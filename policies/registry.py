"""Policies by name. Adding a policy is one module in `policies/` and one line here."""

from __future__ import annotations

import importlib

from policies.base import Policy

POLICIES: dict[str, str] = {
    "cheapest": "policies.baselines:CheapestPolicy",
    "strongest": "policies.baselines:StrongestPolicy",
    "random": "policies.baselines:RandomPolicy",
    "rules": "policies.rules:RulesPolicy",
    "category": "policies.category:CategoryPolicy",
    "knn": "policies.knn:KNNPolicy",
    "logistic": "policies.logistic:LogisticPolicy",
    "mlp": "policies.mlp:MLPPolicy",
    "mf": "policies.mf:MFPolicy",
    "irt": "policies.irt:IRTPolicy",
    "bt": "policies.bradley_terry:BradleyTerryPolicy",
    "cluster": "policies.cluster:ClusterPolicy",
    "routerdc": "policies.routerdc:RouterDCPolicy",
    "ensemble": "policies.ensemble:EnsemblePolicy",
    "cascade": "policies.cascade:CascadePolicy",
    "llm": "policies.llm_router:LLMRouterPolicy",
    "pg": "policies.policy_gradient:PolicyGradientPolicy",
    "linucb": "policies.bandit:LinUCBPolicy",
    "thompson": "policies.bandit:ThompsonPolicy",
}


def policy_class(name: str) -> type[Policy]:
    try:
        target = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy type {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
