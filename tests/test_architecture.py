"""The layout's rules, checked on the source: no import cycle in the core, no source file
over ~400 lines, the core never imports a built-in plugin, plugins import only the public
API, and the old import paths third-party plugins use still work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "kdzoo"
PLUGIN_SOURCES = sorted(p for p in (ROOT / "plugins").glob("*/kdzoo_*/**/*.py")) + sorted((ROOT / "examples").glob("*/kdzoo_*/**/*.py"))
BUILTIN_MODULES = ("kdzoo_models", "kdzoo_data", "kdzoo_losses", "kdzoo_feature_losses", "kdzoo_metrics")
# What a plugin may import from kdzoo: the public API, plus the paths API 1.0 plugins use.
PUBLIC = ("kdzoo", "kdzoo.api", "kdzoo.connectors", "kdzoo.taps", "kdzoo.testing")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path) -> list[str]:
    """Modules imported when ``path`` is imported (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append(node.module)
                found.extend(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CORE.rglob("*.py")}
    return {name: {m for m in module_level_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_core_has_no_import_cycle():
    graph = core_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    (tmp_path / "kdzoo").mkdir()
    (tmp_path / "kdzoo" / "__init__.py").write_text("")
    (tmp_path / "kdzoo" / "a.py").write_text("from kdzoo.b import x\n")
    (tmp_path / "kdzoo" / "b.py").write_text("import kdzoo.a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "CORE", tmp_path / "kdzoo")
    with pytest.raises(pytest.fail.Exception, match="import cycle: kdzoo.a -> kdzoo.b -> kdzoo.a"):
        test_the_core_has_no_import_cycle()


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")) + PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_holds_too_much(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (over {MAX_LINES}): split it by concept"


def test_the_core_never_imports_a_builtin_plugin():
    offenders = [
        f"{p.relative_to(ROOT)}: {m}"
        for p in CORE.rglob("*.py")
        for m in module_level_imports(p) + [n.module or "" for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom)]
        if m.split(".")[0] in BUILTIN_MODULES
    ]
    assert not offenders


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api_and_not_each_other(path):
    own = path.relative_to(ROOT).parts[2]  # plugins/<dist>/<package>/...
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        for name in names:
            top = name.split(".")[0]
            if top == "kdzoo":
                assert name in PUBLIC or name.startswith("kdzoo.api."), f"{path.relative_to(ROOT)} imports {name}, not the public API"
            assert top == own or top not in BUILTIN_MODULES, f"{path.relative_to(ROOT)} imports another plugin: {name}"


def test_the_old_import_paths_still_work():
    import kdzoo.api
    import kdzoo.connectors
    import kdzoo.taps
    import kdzoo.testing

    assert kdzoo.connectors.make_connector is kdzoo.api.make_connector
    assert kdzoo.taps.tapped is kdzoo.api.tapped
    assert kdzoo.testing.isolated_host is not None and "make_distill_batch" in kdzoo.testing.__all__
    assert set(kdzoo.api.__all__) >= {"Network", "CamHead", "Loss", "Metric", "ModelOutputs", "DistillBatch", "EvalBatch", "SetupContext", "ImageData"}


def test_the_public_api_names_resolve_and_hook_modules_stay_torch_free():
    probe = (
        "import sys, kdzoo.api\n"
        "from kdzoo.api import Params, role_key, pair_key, ENSEMBLE, KdzooError, MODEL_FILE\n"
        "assert 'torch' not in sys.modules, 'torch imported by the torch-free part of the API'\n"
        "missing = [n for n in kdzoo.api.__all__ if getattr(kdzoo.api, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    process = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
