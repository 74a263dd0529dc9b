"""Prometheus metrics, on a registry owned by each engine (no global state: tests build their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "moe_router_"
        self.requests = Counter(
            p + "requests",
            "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            p + "request_latency_seconds",
            "End-to-end request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_latency = Histogram(
            p + "model_latency_seconds",
            "Upstream latency per model (successful attempts)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decision_latency = Histogram(
            p + "decision_seconds",
            "Routing decision time (embed + score + constraints) by policy",
            ["policy"],
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            p + "refusals",
            "Requests refused before any model (auth, origin, shape, rate limit, budget), by error code",
            ["code"],
            registry=r,
        )
        self.choices = Counter(
            p + "routed", "Routing decisions: model chosen, by policy", ["policy", "model"], registry=r
        )
        self.tokens = Counter(
            p + "tokens",
            "Tokens processed, by model and kind (prompt|completion)",
            ["model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            p + "cost_usd", "Spend in USD computed from real token counts, by model", ["model"], registry=r
        )
        self.fallbacks = Counter(
            p + "fallbacks",
            "Fallbacks from a failed model to the next candidate",
            ["model", "reason"],
            registry=r,
        )
        self.spillover = Counter(
            p + "spillover",
            "Requests sent past a model at capacity to the next candidate (reason: concurrency|tpm)",
            ["model", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            p + "in_flight",
            "Requests this replica has in flight on a model with a capacity limit",
            ["model"],
            registry=r,
        )
        self.retries = Counter(
            p + "retries", "Retries of the same model after a retryable failure", ["model"], registry=r
        )
        self.upstream_errors = Counter(
            p + "upstream_errors",
            "Failed upstream attempts by model and error",
            ["model", "error"],
            registry=r,
        )
        self.errors = Counter(
            p + "errors", "Error responses by OpenAI error type and code", ["type", "code"], registry=r
        )
        self.breaker_open = Gauge(
            p + "breaker_open", "1 while the model's circuit breaker is open", ["model"], registry=r
        )
        self.experts = Counter(
            p + "expert_selections",
            "Local MoE: times each expert was selected, by model and layer",
            ["model", "layer", "expert"],
            registry=r,
        )
        self.expert_balance = Gauge(
            p + "expert_load_imbalance",
            "Local MoE: the busiest expert's share of a layer's selections over the mean share "
            "(1 = perfectly even; the number of experts = one expert takes everything), since start",
            ["model", "layer"],
            registry=r,
        )
        self._expert_totals: dict[tuple[str, str], list[int]] = {}
        self.cascade = Counter(
            p + "cascade",
            "Cascade policies: first answers accepted or escalated to the strong model",
            ["policy", "outcome"],
            registry=r,
        )
        self.feedback = Counter(
            p + "feedback", "Feedback ratings received, by model and source", ["model", "source"], registry=r
        )
        self.policy_updates = Counter(
            p + "policy_updates",
            "Online policies (bandits): feedback observations learned, by policy and model",
            ["policy", "model"],
            registry=r,
        )
        self.judge_failures = Counter(
            p + "judge_failures",
            "Automatic judge: answers that could not be rated (error, or an unparsable grade)",
            ["reason"],
            registry=r,
        )
        self.affinity = Counter(
            p + "affinity",
            "Routed requests of a conversation: kept on its model, switched, or the first of it",
            ["outcome"],
            registry=r,
        )
        self.cached_tokens = Counter(
            p + "cached_prompt_tokens",
            "Prompt tokens the provider read from its prompt cache (where it reports them), by model",
            ["model"],
            registry=r,
        )
        self.state_faults = Counter(
            p + "state_faults",
            "Shared-state (Redis) operations that Redis answered with an error (not an outage): 500s",
            ["op"],
            registry=r,
        )
        self.state_errors = Counter(
            p + "state_errors", "Shared-state (Redis) operations that failed and degraded", ["op"], registry=r
        )
        self.state_replays = Counter(
            p + "state_replays",
            "Money scripts asked again under the same id because Redis stalled (an answer timed out)",
            ["op"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_experts(self, model: str, usage: dict[str, list[int]] | None) -> None:
        """Count one answer's expert selections and update each layer's load balance."""
        for layer, counts in (usage or {}).items():
            for expert, n in enumerate(counts):
                if n:
                    self.experts.labels(model, layer, str(expert)).inc(n)
            total = self._expert_totals.setdefault((model, layer), [0] * len(counts))
            if len(total) < len(counts):
                total.extend([0] * (len(counts) - len(total)))
            for expert, n in enumerate(counts):
                total[expert] += n
            balance = load_imbalance(total)
            if balance is not None:
                self.expert_balance.labels(model, layer).set(balance)

    def expert_load(self) -> dict[str, dict[str, dict]]:
        """Per model and layer since start: selections per expert and the max/mean imbalance."""
        out: dict[str, dict[str, dict]] = {}
        for (model, layer), total in sorted(self._expert_totals.items()):
            out.setdefault(model, {})[layer] = {"selections": list(total), "imbalance": load_imbalance(total)}
        return out


def load_imbalance(counts: list[int]) -> float | None:
    """max/mean of the experts' selection counts (None before any selection)."""
    total = sum(counts)
    if not counts or total == 0:
        return None
    return max(counts) / (total / len(counts))
