"""Which way imports point (docs/architecture.md): read from the source, every import statement
counted, deferred ones inside functions too (a deferred import still ties two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adapters", "policies", "router", "training")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (`router.config.load_config` -> `router.config`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The project modules `module`'s source imports (not the packages above it, which Python
    runs first whatever the module imports)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            target = _resolve(n)
            if target and target != module and not module.startswith(target + "."):
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for n in GRAPH[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


def test_no_module_imports_itself_round_a_circle():
    cycles = sorted({m for m in MODULES if m in reachable(m)})
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_the_config_is_a_leaf():
    """The typed config imports no policy, adapter or ledger code: reading artifacts (which
    encoder they were fitted with) and knowing the adapters' backends belong to the wiring."""
    deps = reachable("router.config")
    bad = sorted(d for d in deps if d.startswith(("policies", "adapters", "training", "router.ledger.")))
    assert bad == [], bad
    assert "router.ledger" not in deps and deps <= {"router.model_map", "router.params", "router.ledger_url"}


def test_the_encoder_files_are_a_leaf_and_serving_never_exports():
    assert reachable("policies.encoder_files") == set()
    # the runtime session reads exported files; torch and the quantizer are the export's
    assert reachable("policies.onnx_encoder") == {"policies.encoder_files"}
    assert "policies.onnx_export" not in reachable("policies.static_encoder")


def test_policies_and_adapters_never_import_the_router():
    for m in MODULES:
        if m.startswith(("policies", "adapters")):
            assert not {d for d in reachable(m) if d.startswith(("router", "training"))}, m
        if m.startswith("adapters"):
            assert not {d for d in reachable(m) if d.startswith("policies")}, m
