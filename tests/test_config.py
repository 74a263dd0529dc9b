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
