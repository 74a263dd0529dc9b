"""Shared fixtures: a real mock upstream, real gateways on free ports, the real encoder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from policies.encoders import PromptEncoder
from router.config import RouterConfig, load_config
from router.engine import Engine
from router.gateway import create_app
from router.policy_set import encoder_model
from tests.servers import ServerThread
from tests.upstream import MockUpstream

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def priced_model(base_url: str, name: str, pin: float, pout: float, **kw: Any) -> dict[str, Any]:
    """A model entry on the mock upstream at `pin`/`pout` USD per 1M tokens (`kw`: more fields)."""
    return {
        "name": name,
        "backend": "openai",
        "params": {"model": name, "base_url": base_url, "timeout": 10},
        "input_price_per_1m": pin,
        "output_price_per_1m": pout,
        **kw,
    }


def pool(base_url: str) -> list[dict[str, Any]]:
    """Three priced models on the mock upstream, plus one whose API key is never set."""

    def m(name, pin, pout, quality, **kw):
        return priced_model(base_url, name, pin, pout, quality=quality, **kw)

    return [
        m("cheap", 0.1, 0.2, {"default": 0.5, "code": 0.2, "math": 0.3, "chat": 0.75}, context_window=4096),
        m("coder", 1.0, 2.0, {"default": 0.6, "code": 0.95, "math": 0.6, "chat": 0.5}, context_window=32000),
        m("big", 10.0, 30.0, {"default": 0.9, "code": 0.85, "math": 0.9, "chat": 0.8}, context_window=128000),
        {
            "name": "keyless",
            "backend": "openai",
            "params": {
                "model": "keyless",
                "base_url": base_url,
                "api_key": "os.environ/MOE_TEST_NEVER_SET_KEY",
            },
        },
    ]


def make_config(base_url: str, **sections: Any) -> RouterConfig:
    cfg: dict[str, Any] = {
        "models": pool(base_url),
        "dispatch": {"retries": 1, "backoff_s": 0.01, "timeout_s": 10, "max_fallbacks": 2},
        "breaker": {"failure_threshold": 3, "reset_after_s": 30},
        # no SQL ledger unless a test asks for one (`ledger=...`): nothing written under ./data
        "ledger": "none",
    }
    for k, v in sections.items():
        cfg[k] = v if k not in cfg or not isinstance(v, dict) else cfg[k] | v
    return load_config(None, **cfg)


@pytest.fixture(scope="session")
def upstream_server():
    up = MockUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def upstream(upstream_server: MockUpstream) -> MockUpstream:
    upstream_server.reset()
    return upstream_server


@pytest.fixture(scope="session")
def encoder() -> PromptEncoder:
    enc = PromptEncoder()
    enc.load()
    return enc


def cache_with_encoder(root: Path, encoder: PromptEncoder) -> Path:
    """`root` as a `MOE_ROUTER_CACHE_DIR` holding the ONNX export `encoder` loads (its files linked,
    in `policies.encoder_files.onnx_file`'s layout): given an empty cache, a process exports it
    again, ~10 s of torch."""
    export = Path(encoder.load().path).parent
    dest = root / "encoders" / export.name
    if not dest.is_dir():
        dest.mkdir(parents=True)
        for f in export.glob("*.onnx"):
            (dest / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def _training_cache(tmp_path_factory, encoder: PromptEncoder) -> Path:
    return cache_with_encoder(tmp_path_factory.getbasetemp() / "moe-cache", encoder)


@pytest.fixture
def training_cache(_training_cache: Path, monkeypatch) -> Path:
    """`MOE_ROUTER_CACHE_DIR` for the training tests, in process and in the CLI processes they
    start: one directory for the session (each prompt is embedded once) with the encoder export."""
    monkeypatch.setenv("MOE_ROUTER_CACHE_DIR", str(_training_cache))
    return _training_cache


@pytest.fixture
def cli_cache(tmp_path: Path, encoder: PromptEncoder) -> Path:
    """A `MOE_ROUTER_CACHE_DIR` of the test's own for CLI processes (nothing embedded yet), with
    the encoder export."""
    return cache_with_encoder(tmp_path / "cache", encoder)


@dataclass
class Gateway:
    url: str
    engine: Engine
    server: ServerThread

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="test", max_retries=0, timeout=30)

    @property
    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="test", max_retries=0, timeout=30)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)


@pytest.fixture
def start_gateway(encoder: PromptEncoder):
    """Factory: start_gateway(config) -> a gateway serving on a free port; stopped after the test."""
    started: list[Gateway] = []

    def start(config: RouterConfig, **engine_kw: Any) -> Gateway:
        # the session's loaded encoder, unless the config resolves to another build
        shared = encoder if encoder_model(config) == encoder.model else None
        engine = Engine(config, encoder=shared, **engine_kw)
        server = ServerThread(create_app(engine=engine)).start()
        gw = Gateway(server.url, engine, server)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.server.stop()


@pytest.fixture
def gateway(upstream: MockUpstream, start_gateway) -> Gateway:
    """A gateway over the three-model mock pool with default settings."""
    return start_gateway(make_config(upstream.base_url))


def _redis_server():
    from tests.redis_server import RedisServer

    srv = RedisServer().start()
    yield srv
    srv.stop()


# one redis-server for the session (tests flush their database: `redis_url`)
redis_server = pytest.fixture(_redis_server, scope="session", name="redis_server")
# a redis-server of the test's own (to stop, restart or share between processes)
private_redis = pytest.fixture(_redis_server, name="private_redis")


@pytest.fixture
def redis_url(redis_server) -> str:
    """A clean database on a private redis-server."""
    redis_server.client().flushdb()
    return redis_server.url


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory) -> Path:
    """A tiny random Mixtral on disk, loadable by the `transformers` backend."""
    from tests.tiny_moe import cached_tiny_moe

    return cached_tiny_moe(tmp_path_factory.mktemp("models"))
