"""Vendor model names routed, not refused: what an agent asks for by its own names.

Claude Code sends `claude-opus-4-8` or `claude-haiku-4-5` when no model is set, Codex sends
`gpt-5.1-codex`; a name that is not a pool model and matches an alias (config `model_aliases:`,
first match wins; these defaults when unset) is routed as the alias's `model` with the cost weight
of its tier: cheap names (haiku, mini, nano) toward the cheap end, opus toward quality. The
request's own `routing.cost_weight` still wins.
"""

from __future__ import annotations

import fnmatch
import re

from router.config import ModelAlias

TIER_COST_WEIGHTS = {"cheap": 0.8, "balanced": None, "quality": 0.0}

DEFAULTS = [
    ModelAlias(pattern="claude-*haiku*", tier="cheap"),
    ModelAlias(pattern="claude-*opus*", tier="quality"),
    ModelAlias(pattern="claude-*"),
    ModelAlias(pattern="gpt-*nano*", tier="cheap"),
    ModelAlias(pattern="gpt-*mini*", tier="cheap"),
    ModelAlias(pattern="gpt-*"),
    ModelAlias(pattern="o[0-9]*mini*", tier="cheap"),
    ModelAlias(pattern="o[0-9]*"),
    ModelAlias(pattern="codex-*"),
    ModelAlias(pattern="chatgpt-*"),
]


class Aliases:
    def __init__(self, aliases: list[ModelAlias] | None):
        self.aliases = DEFAULTS if aliases is None else aliases
        self._patterns = [re.compile(fnmatch.translate(a.pattern.lower())) for a in self.aliases]

    def match(self, name: str) -> ModelAlias | None:
        low = name.lower()
        return next((a for a, p in zip(self.aliases, self._patterns, strict=True) if p.match(low)), None)

    @staticmethod
    def cost_weight(alias: ModelAlias) -> float | None:
        return alias.cost_weight if alias.cost_weight is not None else TIER_COST_WEIGHTS[alias.tier]


def label(name: str, alias: ModelAlias) -> str:
    """What headers and the record show, printable ASCII only: `claude-opus-4-8=router(quality)`
    when routed (the tier hint applies), `my-team-default=big` for a pool model."""
    safe = "".join(c if " " < c <= "~" and c != "," else "?" for c in name[:128])
    routed = alias.model == "router" or alias.model.startswith("router:")
    return f"{safe}={alias.model}({alias.tier})" if routed else f"{safe}={alias.model}"
