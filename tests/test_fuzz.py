"""Property-based fuzzing of every endpoint from the gateway's own OpenAPI schema (schemathesis
generates the requests, hypothesis drives them): whatever the body — valid for the schema or not —
the answer is never a 5xx and never a hang, and every error is OpenAI-format JSON."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from router.engine import Engine
from router.gateway import create_app
from tests.conftest import make_config
from tests.servers import ServerThread


@pytest.fixture(scope="module")
def fuzzed(upstream_server, encoder):
    cfg = make_config(upstream_server.base_url, dispatch={"timeout_s": 5, "retries": 0})
    app = create_app(engine=Engine(cfg, encoder=encoder))
    server = ServerThread(app).start()
    yield server.url, schemathesis.openapi.from_dict(app.openapi())
    server.stop()


def cases():
    """(method, path, mode) for every operation, read from a schema built without starting anything;
    operations that take a body are also fed bodies that break the schema."""
    app = create_app(engine=None, config=make_config("http://127.0.0.1:9/v1"))
    schema = schemathesis.openapi.from_dict(app.openapi())
    out = []
    for result in schema.get_all_operations():
        op = result.ok()
        out.append((op.method, op.path, GenerationMode.POSITIVE))
        if op.method.upper() == "POST":
            out.append((op.method, op.path, GenerationMode.NEGATIVE))
    return out


@pytest.mark.parametrize(("method", "path", "mode"), cases())
def test_no_request_gets_a_5xx_or_hangs(fuzzed, method, path, mode):
    url, schema = fuzzed
    operation = schema[path][method.upper()]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def probe(case):
        try:
            response = case.call(base_url=url, timeout=15)
        except Exception as e:  # a hang or a dropped connection
            raise AssertionError(f"{method} {path} {case.body!r}: {type(e).__name__}: {e}") from None
        assert response.status_code < 500, (method, path, case.body, response.text)
        if response.status_code >= 400:
            body = response.json()
            if path.startswith("/v1/messages"):  # Anthropic's error shape
                assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
            else:
                assert set(body["error"]) == {"message", "type", "param", "code"}

    probe()
    assert httpx.get(url + "/health").status_code == 200  # still serving
