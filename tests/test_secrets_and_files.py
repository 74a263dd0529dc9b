"""Secrets and files (issue 24): an upstream that echoes the credential is logged scrubbed; the
console's key file and the SQLite ledger are the gateway user's alone."""

from __future__ import annotations

import asyncio
import logging
import os
import stat

import pytest

from adapters.redact import MASK, RedactingFilter, install, redact, secret_values
from router.cli.console_key import console_access, read_or_make
from router.config import RouterConfig
from router.private_files import UnsafeFile
from tests.conftest import make_config
from tests.upstream import MockUpstream

SECRET = "sk-operator-Secret-0123456789abcdef"
MSG = [{"role": "user", "content": "hello"}]


class EchoingUpstream(MockUpstream):
    """An OpenAI-style server that refuses every key and quotes it back, as OpenAI's 401 does."""

    async def _chat(self, request):
        from starlette.responses import JSONResponse

        self.calls_seen = getattr(self, "calls_seen", 0) + 1
        given = request.headers.get("authorization", "")
        body = {
            "error": {
                "message": f"Incorrect API key provided: {given}. Header x-org: {request.headers.get('x-org')}",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        return JSONResponse(body, status_code=401)


@pytest.fixture
def echoing():
    up = EchoingUpstream().start()
    yield up
    up.stop()


def _models(base: str) -> list[dict]:
    return [
        {
            "name": "direct",
            "backend": "openai",
            "params": {
                "model": "direct",
                "base_url": base,
                "api_key": SECRET,
                "headers": {"x-org": "org-Hidden-42"},
            },
        },
        {
            "name": "lite",
            "backend": "litellm",
            "params": {"model": "openai/lite", "api_base": base, "api_key": SECRET, "timeout": 5},
        },
    ]


def test_an_upstream_that_echoes_the_key_is_logged_without_it(echoing, start_gateway, caplog):
    gw = start_gateway(
        make_config(echoing.base_url, models=_models(echoing.base_url), dispatch={"retries": 0})
    )
    with caplog.at_level(logging.DEBUG):
        for model in ("direct", "lite"):
            r = gw.post("/v1/chat/completions", json={"model": model, "messages": MSG})
            assert r.status_code >= 500 and SECRET not in r.text, r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    # the failures were logged with the upstream's words, but never the key or the header value
    assert "Incorrect API key provided" in logged and MASK in logged
    assert SECRET not in logged and SECRET[:20] not in logged and "org-Hidden-42" not in logged


def test_redact_masks_configured_values_and_token_shapes():
    secrets = secret_values(
        {
            "api_key": "plainvalue-123",
            "headers": {"X-Whatever": "hdr-secret-9"},
            "aws_secret_access_key": "AKIA12345",
            "model": "gpt-4o",
        }
    )
    assert secrets == {"plainvalue-123", "hdr-secret-9", "AKIA12345"}  # not the model name
    text = (
        "key plainvalue-123, header hdr-secret-9, aws AKIA12345, Authorization: Bearer abc.def-ghi, "
        "sk-ant-api03-xyzxyzxyz, redis://:hunter2hunter@redis.internal:6379/0, model gpt-4o"
    )
    out = redact(text, secrets)
    for leaked in (
        "plainvalue-123",
        "hdr-secret-9",
        "AKIA12345",
        "abc.def-ghi",
        "sk-ant-api03",
        "hunter2hunter",
    ):
        assert leaked not in out
    assert "Bearer [redacted]" in out and "redis://:[redacted]@redis.internal" in out and "gpt-4o" in out


def test_the_log_filter_scrubs_other_libraries_records(caplog):
    cfg = RouterConfig.model_validate(
        {
            "ledger": "none",
            "state": "redis://:statepass99@127.0.0.1:6379/0",
            "auth": {"master_key": "mk-the-operators-master"},
            "models": [
                {
                    "name": "m",
                    "backend": "openai",
                    "params": {"model": "m", "api_key": "os.environ/MOE_T_KEY"},
                }
            ],
        }
    )
    os.environ["MOE_T_KEY"] = "env-provided-key-77"
    try:
        secrets = cfg.secret_values()
    finally:
        del os.environ["MOE_T_KEY"]
    assert {"statepass99", "mk-the-operators-master", "env-provided-key-77"} <= secrets
    logger = logging.getLogger("some.library")
    caplog.handler.addFilter(RedactingFilter(secrets))
    try:
        logger.warning("retrying with %s and %s", "env-provided-key-77", "Bearer mk-the-operators-master")
        try:
            raise RuntimeError("auth failed for statepass99")
        except RuntimeError:
            logger.exception("boom")
    finally:
        caplog.handler.filters.clear()
    text = caplog.text
    assert "env-provided-key-77" not in text and "mk-the-operators-master" not in text
    assert "statepass99" not in text and "boom" in text and MASK in text
    # install() puts exactly one filter on a logger's handlers, however often it is called
    lg = logging.getLogger("moe_router.test_install")
    lg.addHandler(logging.NullHandler())
    install({"x" * 8}, lg)
    install({"y" * 8}, lg)
    assert [type(f) for f in lg.handlers[0].filters] == [RedactingFilter]


def test_the_master_key_file_is_made_private_and_unsafe_ones_are_refused(tmp_path):
    key_file = tmp_path / "data" / "master-key"
    key = read_or_make(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert read_or_make(key_file) == key  # reused
    # an existing readable file is refused, not reused, and keeps its content
    key_file.chmod(0o644)
    with pytest.raises(UnsafeFile, match="0644"):
        read_or_make(key_file)
    assert key_file.read_text().strip() == key
    # a link planted there is not followed, for reading or writing
    target = tmp_path / "elsewhere"
    target.write_text("mk-planted\n")
    target.chmod(0o600)
    key_file.unlink()
    key_file.symlink_to(target)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        read_or_make(key_file)
    dangling = tmp_path / "data2" / "master-key"
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "not-yet")
    with pytest.raises(UnsafeFile):
        read_or_make(dangling)
    assert not (tmp_path / "not-yet").exists()  # nothing written through the link
    # the gateway start-up refuses with the reason, instead of serving with a leaked key
    cfg = RouterConfig.model_validate({"ledger": "none"})
    with pytest.raises(UnsafeFile):
        console_access(cfg, "127.0.0.1", key_file)
    assert cfg.auth.master_key is None


def test_the_cli_reports_an_unsafe_key_file_in_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "master-key").write_text("mk-" + "a" * 40 + "\n")
    os.chmod(tmp_path / "data" / "master-key", 0o644)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ledger: none\nmodels: []\n")
    env = {k: v for k, v in os.environ.items() if k != "MOE_ROUTER_MASTER_KEY"}
    env["PYTHONPATH"] = os.getcwd()
    p = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", "--config", str(cfg), "--port", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1
    assert "error:" in p.stderr and "mode 0644" in p.stderr and "Traceback" not in p.stderr


def test_the_sqlite_ledger_is_private(tmp_path):
    from router.ledger.schema import connect

    db = tmp_path / "newdata" / "ledger.db"
    engine = connect(f"sqlite+aiosqlite:///{db}")
    asyncio.run(engine.dispose())
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    old = tmp_path / "old.db"
    old.write_bytes(b"")
    old.chmod(0o644)
    asyncio.run(connect(f"sqlite+aiosqlite:///{old}").dispose())
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
