"""The third-party plugin path end to end: `kdzoo plugins` (list, --available, check,
new), `kdzoo install` / `uninstall`, the scaffold round trip and the example plugin.

Nothing here installs into the shared environment: the scaffold goes into a throw-away
virtual environment layered over this one, the example plugin into a --target folder
put on PYTHONPATH, and both are built from copies outside the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kdzoo.cli import cli
from kdzoo.host.loading import ALLOW_LIST_ENV, reset_host
from kdzoo.testing import tiny_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = ROOT / "examples" / "kdzoo-example-plugin"
ENGINE_AVAILABLE = importlib.util.find_spec("kdzoo.run.trainer") is not None and importlib.util.find_spec("kdzoo.run.runner") is not None
OFFLINE_PIP = ["--no-deps", "--no-build-isolation", "--no-index", "--quiet"]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ALLOW_LIST_ENV, "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"  # tiny tensors on a shared CPU: one thread is fastest
    return {**env, **extra}


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", subprocess_env())
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)


def ok(process: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert process.returncode == 0, f"{process.args}\nstdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return process


@pytest.fixture
def kdzoo_cli():
    """Invoke the `kdzoo` CLI in process, with a plugin host loaded afresh."""
    reset_host()
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli, list(args))
    reset_host()


@pytest.fixture
def fake_installed_plugin(tmp_path, monkeypatch):
    """Make a module look installed as a plugin: a dist-info with a `kdzoo` entry point on sys.path."""

    modules: list[str] = []

    def install(distribution: str, plugin: str, module: str, source: str) -> None:
        site = tmp_path / "site"
        dist_info = site / f"{distribution.replace('-', '_')}-0.3.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.3.0\n")
        (dist_info / "entry_points.txt").write_text(f"[kdzoo]\n{plugin} = {module}\n")
        (site / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(site))
        modules.append(module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)
    reset_host()


# ----------------------------------------------------------------------------- kdzoo plugins
def test_plugins_lists_installed_plugins_and_their_components_by_kind(kdzoo_cli):
    result = kdzoo_cli("plugins")
    assert result.exit_code == 0, result.output
    assert "kdzoo-losses 0.1.0" in result.output
    assert any(line.split()[0] == "loss" and "ce," in line.split() for line in result.output.splitlines())
    data = json.loads(kdzoo_cli("plugins", "--json").output)
    losses = next(p for p in data["plugins"] if p["name"] == "kdzoo-losses")
    assert losses["distribution"] == "kdzoo-losses" and losses["api"] == "1.3"  # it declares what crld and mlkd (views) need
    kd = next(c for c in losses["components"]["loss"] if c["name"] == "kd")
    assert kd["defaults"] == {"temperature": 4.0}
    assert kd["params"]["properties"]["temperature"]["exclusiveMinimum"] == 0
    verbose = kdzoo_cli("plugins", "-v").output
    assert "module kdzoo_losses" in verbose and "Hinton KD" in verbose and "[temperature=4.0]" in verbose


def names_by_kind(plugin: dict) -> dict[str, list[str]]:
    return {kind: [c["name"] for c in items] for kind, items in plugin["components"].items()}


def test_plugins_shows_plugins_that_failed_to_load_with_the_reason(kdzoo_cli, fake_installed_plugin):
    fake_installed_plugin("kdzoo-broken", "broken", "kdzoo_broken_hooks", "import no_such_dependency_xyz\n")
    fake_installed_plugin("kdzoo-extra", "extra", "kdzoo_extra_hooks", (
        "from kdzoo import hookimpl\n"
        "@hookimpl\n"
        "def register_losses(register):\n"
        "    register('extra-loss', 'kdzoo_extra_hooks:missing', description='an extra loss')\n"
    ))
    result = kdzoo_cli("plugins")
    assert result.exit_code == 0, result.output
    assert "extra 0.3.0 (distribution kdzoo-extra)" in result.output
    failed = " ".join(result.output.split("Failed to load:")[1].split())  # unwrapped
    assert "broken:" in failed and "No module named 'no_such_dependency_xyz'" in failed
    data = json.loads(kdzoo_cli("plugins", "--json").output)
    assert data["failed"][0]["name"] == "broken"
    assert names_by_kind(next(p for p in data["plugins"] if p["name"] == "extra")) == {"loss": ["extra-loss"]}


def test_listing_plugins_does_not_import_torch():
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from kdzoo.cli import cli\n"
        "for args in (['plugins'], ['plugins', '--available', '--json']):\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print('torch' in sys.modules)\n"
    )
    assert ok(run([sys.executable, "-c", probe])).stdout.strip() == "False"


def test_available_lists_the_catalogue_with_what_is_installed(kdzoo_cli):
    result = kdzoo_cli("plugins", "--available")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:3] for line in result.output.splitlines() if line.startswith("kdzoo-")}
    assert rows["kdzoo-losses"] == ["0.1.0", "yes"]
    assert rows["kdzoo-example-plugin"] == ["no", "no"]
    data = json.loads(kdzoo_cli("plugins", "--available", "--json").output)
    example = next(p for p in data["plugins"] if p["name"] == "kdzoo-example-plugin")
    assert example["installed"] is None and example["kinds"]["loss"] == ["jsd-kd"]


@pytest.fixture
def broken_module(tmp_path, monkeypatch):
    """An importable hook module with a misspelt hook, forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "kdzoo_cli_broken.py").write_text("from kdzoo import hookimpl\n@hookimpl\ndef register_metric(register):\n    pass\n")
    yield "kdzoo_cli_broken"
    sys.modules.pop("kdzoo_cli_broken", None)


def test_check_prints_the_report_and_exits_1_on_failure(kdzoo_cli, broken_module):
    good = kdzoo_cli("plugins", "check", "kdzoo-metrics")
    assert good.exit_code == 0, good.output
    assert good.output.strip().splitlines()[-1].startswith("OK:")
    bad = kdzoo_cli("plugins", "check", "kdzoo_cli_broken")
    assert bad.exit_code == 1
    assert "did you mean 'register_metrics'?" in bad.output and "FAILED" in bad.output
    report = json.loads(kdzoo_cli("plugins", "check", "kdzoo_cli_broken", "--json").output)
    assert report["ok"] is False
    assert [r["subject"] for r in report["results"] if r["status"] == "fail"] == ["register_metric()"]


# ----------------------------------------------------------------------------- kdzoo plugins new
def test_new_writes_a_plugin_package(kdzoo_cli, tmp_path):
    root = tmp_path / "kdzoo-sharp-kd"
    result = kdzoo_cli("plugins", "new", "kdzoo-sharp-kd", "--dir", str(root))
    assert result.exit_code == 0, result.output
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "kdzoo_sharp_kd/__init__.py", "kdzoo_sharp_kd/loss.py", "pyproject.toml", "tests/test_kdzoo_sharp_kd.py"]
    assert '[project.entry-points.kdzoo]\nkdzoo-sharp-kd = "kdzoo_sharp_kd"' in (root / "pyproject.toml").read_text()
    hooks = (root / "kdzoo_sharp_kd" / "__init__.py").read_text()
    assert '"sharp-kd",\n        "kdzoo_sharp_kd.loss:SharpKdLoss"' in hooks and "KDZOO_PLUGIN_API = (1, 1)" in hooks
    assert "kdzoo install -e ." in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["kdzoo kd"], "'kdzoo kd' cannot name a plugin"),
        (["kdzoo"], "is kdzoo itself"),
        (["kdzoo-kd"], "the sample loss would be called 'kd', which plugin 'kdzoo-losses' already registers"),
        (["kdzoo-losses"], "a distribution named kdzoo-losses is already installed"),
        (["kdzoo-fresh", "--dir", "{occupied}"], "already exists and is not empty"),
    ],
)
def test_new_refuses_names_and_folders_that_would_not_work(kdzoo_cli, tmp_path, args, message):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    result = kdzoo_cli("plugins", "new", *[a.format(occupied=occupied) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert (occupied / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- kdzoo install / uninstall
@pytest.fixture
def small_catalogue(tmp_path, monkeypatch):
    """A catalogue with a local plugin folder, an index plugin and one that needs a newer kdzoo."""
    (tmp_path / "local-plugin").mkdir()
    (tmp_path / "local-plugin" / "pyproject.toml").write_text("[project]\nname = 'kdzoo-local'\n")
    entries = [
        {"name": "kdzoo-local", "pip": "./local-plugin", "summary": "s", "kinds": {"loss": ["a"]}},
        {"name": "kdzoo-remote", "pip": "kdzoo-remote-dist", "summary": "s", "kinds": {"loss": ["b"]}},
        {"name": "kdzoo-future", "pip": "kdzoo-future", "summary": "s", "kinds": {"loss": ["c"]}, "min_kdzoo": "99.0"},
    ]
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "plugins": entries}))
    monkeypatch.setenv("KDZOO_CATALOGUE", str(path))
    return tmp_path


def test_install_resolves_names_through_the_catalogue(small_catalogue):
    from kdzoo.errors import KdzooError
    from kdzoo.cli.plugins import resolve_requirement

    local = str((small_catalogue / "local-plugin").resolve())
    assert resolve_requirement("kdzoo-local") == local
    assert resolve_requirement("KDZOO_Local", editable=True) == local
    assert resolve_requirement("kdzoo-remote>=0.2") == "kdzoo-remote-dist>=0.2"
    assert resolve_requirement(str(small_catalogue / "local-plugin")) == local
    assert resolve_requirement("git+https://example.org/x/kdzoo-x") == "git+https://example.org/x/kdzoo-x"
    assert resolve_requirement("kdzoo-unlisted==1.0", pypi=True) == "kdzoo-unlisted==1.0"
    for target, options, message in [
        ("kdzoo-remot", {}, "'kdzoo-remot' is not in the plugin catalogue (did you mean 'kdzoo-remote'?)"),
        ("kdzoo-remote", {"editable": True}, "-e needs a local package folder"),
        ("kdzoo-local==1.0", {}, "a version specifier does not apply"),
        ("kdzoo-future", {}, "needs kdzoo >= 99.0"),
        ("./no/such/folder", {}, "no such file or folder"),
        (str(small_catalogue), {}, "is not a Python package folder"),
    ]:
        with pytest.raises(KdzooError, match=re.escape(message)):
            resolve_requirement(target, **options)


def test_install_and_uninstall_run_pip_in_the_same_interpreter(kdzoo_cli, small_catalogue, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append(command) or subprocess.CompletedProcess(command, 0))
    assert kdzoo_cli("install", "kdzoo-local", "-e", "-U", "--no-deps").exit_code == 0
    assert kdzoo_cli("uninstall", "kdzoo-metrics", "-y").exit_code == 0
    pip = [sys.executable, "-m", "pip"]
    assert calls == [
        [*pip, "install", "--upgrade", "-e", str((small_catalogue / "local-plugin").resolve()), "--no-deps"],
        [*pip, "uninstall", "kdzoo-metrics", "-y"],
    ]
    unknown = kdzoo_cli("install", "kdzoo-remot")
    assert unknown.exit_code == 2 and "did you mean 'kdzoo-remote'?" in unknown.output
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1))
    failed = kdzoo_cli("install", "kdzoo-remote")
    assert failed.exit_code == 2 and "pip exited with status 1" in failed.output


@pytest.mark.parametrize(
    "name, message",
    [
        ("kdzoo-metrix", "no installed plugin named 'kdzoo-metrix' (did you mean 'kdzoo-metrics'?)"),
        ("pluggy", "pluggy is installed but is not a kdzoo plugin"),
        ("kdzoo", "kdzoo does not uninstall itself"),
    ],
)
def test_uninstall_refuses_what_is_not_an_installed_plugin(kdzoo_cli, name, message):
    result = kdzoo_cli("uninstall", name, "-y")
    assert result.exit_code == 2 and message in result.output


# ----------------------------------------------------------------------------- round trips with real pip
@pytest.fixture
def overlay_python(tmp_path):
    """A throw-away virtual environment that also sees this one's packages: pip installs
    into (and uninstalls from) it alone, so the shared environment is never touched."""
    venv = tmp_path / "venv"
    ok(run([sys.executable, "-m", "venv", "--without-pip", str(venv)]))
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_packages = Path(ok(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])).stdout.strip())
    (site_packages / "_kdzoo_outer_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return str(python)


def test_a_new_plugin_installs_passes_check_and_its_tests_then_uninstalls(overlay_python, tmp_path):
    root = tmp_path / "kdzoo-roundtrip"
    kdzoo = [overlay_python, "-m", "kdzoo"]
    ok(run([*kdzoo, "plugins", "new", "kdzoo-roundtrip", "--dir", str(root)]))
    ok(run([*kdzoo, "install", "-e", str(root), *OFFLINE_PIP]))
    listed = json.loads(ok(run([*kdzoo, "plugins", "--json"])).stdout)
    plugin = next(p for p in listed["plugins"] if p["name"] == "kdzoo-roundtrip")
    assert names_by_kind(plugin) == {"loss": ["roundtrip"]} and not listed["failed"]
    report = ok(run([*kdzoo, "plugins", "check", "kdzoo-roundtrip"])).stdout
    assert "OK: 6 passed, 0 failed, 0 skipped" in report, report
    tests = ok(run([overlay_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)], cwd=root)).stdout
    assert "4 passed" in tests, tests
    ok(run([*kdzoo, "uninstall", "kdzoo-roundtrip", "-y"]))
    listed = json.loads(ok(run([*kdzoo, "plugins", "--json"])).stdout)
    assert "kdzoo-roundtrip" not in [p["name"] for p in listed["plugins"]]


@pytest.fixture(scope="module")
def example_plugin_path(tmp_path_factory):
    """The example plugin built from a copy (no build/ left in the repo) into a --target folder."""
    base = tmp_path_factory.mktemp("example-plugin")
    source = base / "source"
    shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    ok(run([sys.executable, "-m", "pip", "install", "--target", str(target), *OFFLINE_PIP, str(source)]))
    return {"site": str(target), "source": source}


def test_the_example_plugin_installed_in_a_target_folder_is_seen_and_passes(example_plugin_path):
    env = subprocess_env(PYTHONPATH=example_plugin_path["site"])
    kdzoo = [sys.executable, "-m", "kdzoo"]
    listed = json.loads(ok(run([*kdzoo, "plugins", "--json"], env=env)).stdout)
    example = next(p for p in listed["plugins"] if p["name"] == "kdzoo-example")
    assert example["distribution"] == "kdzoo-example-plugin"
    assert names_by_kind(example) == {"augmentation": ["brightness-contrast"], "loss": ["jsd-kd"]}
    report = ok(run([*kdzoo, "plugins", "check", "kdzoo-example-plugin"], env=env)).stdout
    assert "OK: 9 passed, 0 failed, 0 skipped" in report, report
    source = example_plugin_path["source"]
    tests = ok(run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source)], env=env, cwd=source)).stdout
    assert "7 passed" in tests, tests


@pytest.mark.slow
@pytest.mark.skipif(not ENGINE_AVAILABLE, reason="needs the engine (kdzoo.run.trainer, kdzoo.run.runner)")
def test_kdzoo_run_trains_with_the_example_plugins_loss_and_augmentation(example_plugin_path, tmp_path):
    spec = tiny_spec(
        augmentation={"name": "brightness-contrast", "params": {"brightness": 0.3}},
        losses=[{"name": "ce", "weight": 0.5}, {"name": "jsd-kd", "weight": 0.5, "params": {"temperature": 2.0}}],
        output_dir=str(tmp_path / "runs"),
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    env = subprocess_env(PYTHONPATH=example_plugin_path["site"])
    ok(run([sys.executable, "-m", "kdzoo", "run", str(spec_path), "--out", str(out), "--quiet"], env=env))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "distill" and "test/top1/student" in summary["final"]
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["spec"]["losses"][1] == {"name": "jsd-kd", "params": {"temperature": 2.0}, "weight": 0.5}
    assert manifest["spec"]["augmentation"] == {"name": "brightness-contrast", "params": {"brightness": 0.3, "contrast": 0.2}}
    assert manifest["versions"]["plugins"]["kdzoo-example"] == "0.1.0"
