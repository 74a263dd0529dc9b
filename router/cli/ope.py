"""`moe-router ope`: off-policy evaluation of a policy on the gateway's logged, rated traffic."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, UserError, load


def read_log(path: Path) -> tuple[list[dict], dict[str, int]]:
    """Rows of `moe-router export` usable for OPE (rated, with a propensity), and why others were not."""
    if not path.is_file():
        raise UserError(f"no log file at {path}")
    kept: list[dict] = []
    skipped = {"unrated": 0, "no_propensity": 0, "unreadable": 0}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped["unreadable"] += 1
                continue
            if not isinstance(row, dict) or not row.get("prompt") or not row.get("model"):
                skipped["unreadable"] += 1
            elif row.get("quality") is None:
                skipped["unrated"] += 1
            elif not row.get("propensity"):
                skipped["no_propensity"] += 1
            else:
                kept.append(row)
    return kept, skipped


@app.command()
def ope(
    log: Path = typer.Option(
        ..., "--log", help="JSONL from `moe-router export` (rated requests with propensities)"
    ),
    policy: str = typer.Option(
        ..., "--policy", "-p", help="a policy name from the config, or an artifact directory"
    ),
    config: Path | None = ConfigOption,
    cost_weight: float = typer.Option(
        None, min=0, max=1, help="trade-off for the target policy (default: each request's logged one)"
    ),
    out: Path | None = typer.Option(None, "--json", help="also write the estimates as JSON"),
) -> None:
    """Estimate the mean rating POLICY would have earned on the logged traffic (IPS, SNIPS, DM, DR)
    with 95% intervals, beside what the logging policies earned."""
    import numpy as np

    from policies.base import PromptBatch
    from policies.capabilities import OnlineRouter, implements
    from policies.decision import choose
    from router.policy_set import PolicySet, build_encoder
    from training.ope import effective_sample_size, estimate, reward_model

    rows, skipped = read_log(log)
    cfg = load(config)
    arms = [m.name for m in cfg.models]
    unknown = sum(r["model"] not in arms for r in rows)
    rows = [r for r in rows if r["model"] in arms]
    if len(rows) < 2:
        raise UserError(
            f"{log}: {len(rows)} usable rows (need >= 2 rated requests with a propensity, "
            f"routed to models of this config); skipped {skipped}, {unknown} of unknown models"
        )
    encoder = build_encoder(cfg)
    if Path(policy).is_dir():
        from policies.artifacts import load_policy

        target, name = load_policy(policy, encoder=encoder), Path(policy).name
    else:
        target, name = PolicySet(cfg, encoder).get(policy), policy
        if target is None:
            raise UserError(f"unknown policy {policy!r}: name one from the config or an artifact directory")

    texts = [r["prompt"] for r in rows]
    tokens = np.array(
        [r.get("prompt_tokens") or max(1, len(t) // 4) for r, t in zip(rows, texts, strict=True)]
    )
    emb = np.asarray(encoder.encode(texts), dtype=np.float32)
    batch = PromptBatch(texts, embeddings=emb, prompt_tokens=tokens)
    col = {m: j for j, m in enumerate(target.models_)}
    scored = np.array([m in col for m in arms])
    pq = target.predict_quality(batch)
    quality = np.array([[pq[i, col[m]] if m in col else 0.0 for m in arms] for i in range(len(rows))])
    specs = {m.name: m for m in cfg.models}
    cost = np.array([[specs[m].cost_usd(t, specs[m].expected_output_tokens) for m in arms] for t in tokens])
    pc = target.predict_cost(batch)
    if pc is not None:
        cost[:, scored] = pc[:, [col[m] for m in np.array(arms)[scored]]]
    weights = [
        cost_weight if cost_weight is not None else r.get("cost_weight", cfg.routing.cost_weight) or 0.0
        for r in rows
    ]
    # the target may choose among the models it scores that the log has traffic for
    eligible = scored & np.isin(arms, [r["model"] for r in rows])
    probs = np.zeros((len(rows), len(arms)))
    for i, w in enumerate(weights):
        if implements(target, OnlineRouter):  # a bandit's own exploration distribution
            idx = [arms.index(m) for m in target.models_]
            one = PromptBatch([texts[i]], embeddings=emb[i : i + 1], prompt_tokens=tokens[i : i + 1])
            probs[i, idx] = target.action_probabilities(one, cost[i, idx], eligible[idx], w)
        else:
            probs[i, choose(quality[i : i + 1], cost[i : i + 1], w, eligible[None, :])[0]] = 1.0

    actions = np.array([arms.index(r["model"]) for r in rows])
    rewards = np.array([float(r["quality"]) for r in rows])
    prop = np.array([float(r["propensity"]) for r in rows])
    try:
        est = estimate(rewards, actions, prop, probs, reward_model(emb, actions, rewards, len(arms)))
    except ValueError as e:
        raise UserError(f"{log}: {e}") from None
    ess = effective_sample_size(probs[np.arange(len(rows)), actions], prop)
    agree = float(np.mean(probs[np.arange(len(rows)), actions] > 0))

    typer.echo(
        f"{len(rows)} logged requests (skipped {sum(skipped.values()) + unknown}: {skipped}, unknown models {unknown})"
    )
    typer.echo(
        f"logged policies earned {rewards.mean():.4f}; target {name!r} agrees on {agree:.1%}, ESS {ess:.1f}"
    )
    typer.echo(f"{'estimator':<10} {'value':>8} {'95% CI':>20}")
    for e in est.values():
        typer.echo(f"{e.estimator:<10} {e.value:>8.4f} {f'[{e.low:.4f}, {e.high:.4f}]':>20}")
    if out is not None:
        out.write_text(
            json.dumps(
                {
                    "policy": name,
                    "rows": len(rows),
                    "skipped": {**skipped, "unknown_model": unknown},
                    "logged_value": float(rewards.mean()),
                    "agreement": agree,
                    "effective_sample_size": ess,
                    "estimates": {k: e.as_dict() for k, e in est.items()},
                },
                indent=2,
            )
            + "\n"
        )
