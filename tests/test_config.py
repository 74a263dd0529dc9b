"""Config: YAML + env overrides, secrets by reference, clear errors."""

from __future__ import annotations

import pytest

from router.config import ConfigError, load_config


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_embedded_default_works_without_keys(monkeypatch):
    for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    cfg = load_config()
    local = cfg.model("smollm2-135m")
    assert local is not None and local.backend == "transformers" and local.missing_env() == []
    assert cfg.model("gpt-4o").missing_env() == ["OPENAI_API_KEY"]
    assert cfg.routing.default_policy == "irt"
    assert cfg.state == "memory" and cfg.auth.require_keys is False


def test_secret_references_resolve_late(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    spec = load_config().model("gpt-4o")
    assert spec.missing_env() == []
    assert spec.params["api_key"] == "os.environ/OPENAI_API_KEY"  # never stored resolved
    assert spec.resolved_params()["api_key"] == "sk-test-123"


def test_env_overrides_file(tmp_path, monkeypatch):
    p = write(tmp_path, "routing: {default_policy: category, cost_weight: 0.3}\nserver: {port: 9001}\n")
    monkeypatch.setenv("MOE_ROUTER_ROUTING__COST_WEIGHT", "0.7")
    monkeypatch.setenv("MOE_ROUTER_STATE", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("MOE_ROUTER_REQUIRE_KEYS", "1")
    cfg = load_config(p)
    assert cfg.routing.cost_weight == 0.7 and cfg.server.port == 9001
    assert cfg.state == "redis://127.0.0.1:6379/3"
    assert cfg.auth.require_keys is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [{name: a, backend: openai, colour: red}]", "models.0.colour"),
        ("models: [{name: a, backend: openai}, {name: a, backend: openai}]", "duplicate model names"),
        ("models: [{name: router, backend: openai}]", "reserved"),
        ("models: [{name: a, backend: openai, quality: {default: 3}}]", "0..1"),
        ("routing: {cost_weight: 2}", "routing.cost_weight"),
        ("state: postgres://x", "state must be"),
        ("routing: {policies: {p: {type: knn, artifact: /x}}}", "exactly one"),
        ("models: [\n  - {name: a", "not valid YAML"),
        ("- a\n- b", "mapping"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_the_default_ledger_follows_the_config_file(tmp_path, monkeypatch):
    """Two gateways started from one directory with different configs keep their traffic apart."""
    monkeypatch.delenv("MOE_ROUTER_LEDGER", raising=False)
    (tmp_path / "a").mkdir()
    a = load_config(write(tmp_path / "a", "server: {port: 9001}\n"))
    b = load_config(write(tmp_path, "server: {port: 9002}\n").rename(tmp_path / "team b.yaml"))
    assert a.ledger == "sqlite+aiosqlite:///data/ledger-c.db" and a.source == str(tmp_path / "a" / "c.yaml")
    assert b.ledger == "sqlite+aiosqlite:///data/ledger-team_b.db"
    assert load_config().ledger == "sqlite+aiosqlite:///data/ledger.db"
    assert load_config().source == "embedded default config"
    named = load_config(write(tmp_path, "ledger: sqlite+aiosqlite:///x/mine.db\n"))
    assert named.ledger == "sqlite+aiosqlite:///x/mine.db"  # a ledger the file names is kept
    monkeypatch.setenv("MOE_ROUTER_LEDGER", "none")
    assert load_config(tmp_path / "team b.yaml").ledger == "none"  # and the environment wins
