"""OpenTelemetry traces: a request span with embed/score/dispatch/settle children and the
decision's attributes, in memory and over OTLP/HTTP to a collector stand-in on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from router.tracing import REQUEST_SPAN, Tracing, span, traces_url
from tests.conftest import make_config
from tests.upstream import Fail


@pytest.fixture(autouse=True)
def _no_ambient_otel(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)


def traced_gateway(start_gateway, upstream, **sections):
    exporter = InMemorySpanExporter()
    gw = start_gateway(make_config(upstream.base_url, **sections), tracing=Tracing(exporter=exporter))
    return gw, exporter


def wait_for_spans(exporter: InMemorySpanExporter, name: str, n: int = 1, timeout_s: float = 30.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_a_routed_request_is_one_span_with_its_stages_as_children(start_gateway, upstream):
    gw, exporter = traced_gateway(start_gateway, upstream)
    resp = gw.client.chat.completions.create(
        model="router", messages=[{"role": "user", "content": "Write a Python quicksort function."}]
    )
    (root,) = wait_for_spans(exporter, REQUEST_SPAN)
    children = {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == root.context.span_id
    }
    assert set(children) == {"embed", "score", "dispatch", "settle"}
    assert all(s.context.trace_id == root.context.trace_id for s in children.values())
    a = root.attributes
    assert a["moe_router.model"] == resp.model == "coder"
    assert a["moe_router.policy"] == "irt" and a["moe_router.kind"] == "chat"
    assert a["moe_router.request_id"] == resp.id and a["moe_router.status"] == "ok"
    decision = gw.post(
        "/v1/route", json={"messages": [{"role": "user", "content": "Write a Python quicksort function."}]}
    ).json()
    chosen = next(c for c in decision["candidates"] if c["model"] == "coder")
    assert a["moe_router.predicted.quality"] == pytest.approx(chosen["predicted_quality"])
    assert a["moe_router.predicted.cost_usd"] == pytest.approx(chosen["predicted_cost_usd"])
    # no latency prior in this pool and no sample before the first request: left out, not 0
    assert "moe_router.predicted.latency_ms" not in a
    assert a["moe_router.cost_usd"] == pytest.approx(
        (resp.usage.prompt_tokens * 1.0 + resp.usage.completion_tokens * 2.0) / 1e6
    )
    assert a["moe_router.latency_ms"] > 0
    assert a["moe_router.prompt_tokens"] == resp.usage.prompt_tokens
    assert root.status.status_code != StatusCode.ERROR


def test_a_stream_span_ends_after_its_settlement(start_gateway, upstream):
    gw, exporter = traced_gateway(start_gateway, upstream)
    chunks = gw.client.chat.completions.create(
        model="router:cheapest", messages=[{"role": "user", "content": "hello there"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "cheap: hello there"
    (root,) = wait_for_spans(exporter, REQUEST_SPAN)
    assert root.attributes["moe_router.kind"] == "stream" and root.attributes["moe_router.model"] == "cheap"
    assert root.attributes["moe_router.status"] == "ok"
    settle = [s for s in exporter.get_finished_spans() if s.name == "settle"]
    assert len(settle) == 1 and settle[0].parent.span_id == root.context.span_id
    assert settle[0].end_time <= root.end_time


def test_fallbacks_and_failures_are_on_the_span(start_gateway, upstream):
    gw, exporter = traced_gateway(start_gateway, upstream, dispatch={"retries": 0, "max_fallbacks": 0})
    upstream.script("cheap", Fail(500))
    r = gw.post(
        "/v1/chat/completions", json={"model": "cheap", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code >= 500
    (root,) = wait_for_spans(exporter, REQUEST_SPAN)
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["moe_router.status"] == "error"
    assert "moe_router.model" not in root.attributes  # no model answered


def test_off_by_default_and_a_no_op(upstream, gateway):
    t = Tracing()
    assert not t.enabled and t.request("chat") is None
    with t.use(None), span("embed") as s:
        assert s is None  # nothing is created when no request is traced
    assert gateway.engine.tracing.enabled is False
    assert gateway.client.chat.completions.create(
        model="cheap", messages=[{"role": "user", "content": "x"}]
    ).choices


def test_traces_url():
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


class Collector:
    """An OTLP/HTTP collector stand-in: records each POST /v1/traces body."""

    def __init__(self):
        self.bodies: list[tuple[str, bytes]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append((self.path, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[dict, object]]:
        out = []
        for path, body in self.bodies:
            assert path == "/v1/traces"
            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                out += [(resource, s) for ss in rs.scope_spans for s in ss.spans]
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_spans_are_exported_over_otlp_http(start_gateway, upstream):
    collector = Collector()
    try:
        gw = start_gateway(
            make_config(
                upstream.base_url,
                tracing={"enabled": True, "endpoint": collector.url, "service_name": "router-under-test"},
            )
        )
        resp = gw.client.chat.completions.create(
            model="router:cheapest", messages=[{"role": "user", "content": "hello"}]
        )
        gw.engine.tracing.force_flush()
        spans = collector.spans()
        roots = [(res, s) for res, s in spans if s.name == REQUEST_SPAN]
        assert len(roots) == 1
        resource, root = roots[0]
        assert resource["service.name"] == "router-under-test"
        attrs = {kv.key: kv.value for kv in root.attributes}
        assert attrs["moe_router.model"].string_value == resp.model == "cheap"
        assert attrs["moe_router.policy"].string_value == "cheapest"
        assert {s.name for _, s in spans if s.parent_span_id == root.span_id} >= {"dispatch", "settle"}
    finally:
        collector.close()
