"""kdzoo from Python (notebooks, scripts): validate a spec, run it, read its results and
load the trained model. Guide and worked example: docs/python-api.md.

Each function does what its command does, with the same checks: a spec, run directory or
checkpoint the command would refuse raises :class:`kdzoo.errors.KdzooError` carrying the
message the command prints (a failed run raises its ``TrainingError``). Exported lazily
as ``kdzoo.load_spec``, ``kdzoo.run_spec``, ``kdzoo.load_model``, ``kdzoo.load_summary``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdzoo import rundir
from kdzoo.errors import KdzooError

if TYPE_CHECKING:
    from torch import nn

    from kdzoo.host import PluginHost
    from kdzoo.spec import AnySpec

DICT_SOURCE = "<spec dict>"  # how errors name a spec given as a dict


@dataclass
class Spec:
    """A validated spec, ready to run: ``data`` (the spec as given, ``overrides`` applied,
    ``matrix:`` included), ``runs`` (one ``(name, validated spec)`` per arm, or one for a
    spec without a matrix), the plugin ``host`` it was validated against, and ``source``
    (its file, or ``<spec dict>``), which messages name."""

    data: dict[str, Any]
    runs: list[tuple[str, AnySpec]]
    host: PluginHost
    source: str

    @property
    def grid(self) -> bool:
        """True for a spec with ``matrix:`` (one run per arm)."""
        return self.data.get("matrix") is not None

    @property
    def arms(self) -> list[str]:
        """The names of its runs (its arms' for a grid)."""
        return [name for name, _ in self.runs]


@dataclass
class RunResult:
    """What :func:`run_spec` gave. ``summaries``: arm name -> the run's summary.json (one
    entry, named after the spec, for a spec without a matrix); ``final``: arm name -> its
    final metrics (keys ``split/quantity/role``, e.g. ``test/top1/student``); ``failed``:
    the grid arms that failed (their summaries hold the error under ``failed``);
    ``run_dirs``: arm name -> its run directory (what :func:`load_model` takes);
    ``report_dir``: where the study report went (a grid over seeds), else None."""

    run_dir: Path
    summaries: dict[str, dict[str, Any]]
    final: dict[str, dict[str, Any]]
    failed: list[str]
    run_dirs: dict[str, Path]
    grid: bool = False
    report_dir: Path | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        """The final metrics of the one run (a spec without a matrix, or a one-arm grid)."""
        if len(self.final) != 1:
            raise KdzooError(f"{self.run_dir} holds {len(self.final)} arms: read result.final[ARM] "
                             f"({', '.join(self.final)})")
        return next(iter(self.final.values()))


def load_spec(path_or_dict: str | Path | Mapping[str, Any], overrides: Iterable[str] = (),
              plugins_dirs: Iterable[str | Path] = ()) -> Spec:
    """Read and validate a spec as ``kdzoo validate`` does: a YAML/JSON file, or a dict with
    the same keys (its ``plugins:`` paths relative to the working directory).

    ``overrides`` are ``--set`` items (``"epochs=3"``, ``"matrix.seed=[0,1]"``);
    ``plugins_dirs`` are ``--plugins-dir`` folders. Every matrix arm is validated; a bad
    spec raises ``KdzooError`` listing each offending field, as the CLI prints it."""
    from kdzoo.spec import load_spec as load_spec_file
    from kdzoo.host.weights import refuse_missing_weights
    from kdzoo.spec.loading import apply_overrides, validate_runs
    from kdzoo.spec.plugin_files import files_in_dirs, plugin_files_of, resolve_plugin_paths

    overrides = [str(o) for o in ([overrides] if isinstance(overrides, str) else overrides)]
    dirs = [Path(d) for d in ([plugins_dirs] if isinstance(plugins_dirs, (str, Path)) else plugins_dirs)]
    for folder in dirs:
        if not folder.is_dir():
            raise KdzooError(f"plugins_dirs: {folder} is not a folder")
    if isinstance(path_or_dict, Mapping):
        data = apply_overrides(copy.deepcopy(dict(path_or_dict)), overrides)
        files = [*resolve_plugin_paths(data, Path.cwd(), DICT_SOURCE), *files_in_dirs(dirs)]
        host = _load_host(files)
        runs = validate_runs(data, host.registry, DICT_SOURCE)
        refuse_missing_weights(runs, host.registry, DICT_SOURCE, overrides, dirs)
        return Spec(data, runs, host, DICT_SOURCE)
    if not isinstance(path_or_dict, (str, Path)):
        raise KdzooError(f"load_spec: give a spec file path or a dict (got {type(path_or_dict).__name__})")
    path = Path(path_or_dict)
    host = _load_host(plugin_files_of(path, dirs, overrides))
    data, runs = load_spec_file(path, host.registry, overrides)
    refuse_missing_weights(runs, host.registry, str(path), overrides, dirs)
    return Spec(data, runs, host, str(path))


def run_spec(spec_or_path: Spec | str | Path | Mapping[str, Any], out: str | Path | None = None,
             arms: str | Iterable[str] | None = None, fuse: bool = True, resume: bool = False, quiet: bool = True,
             log: Callable[[str], None] | None = print, force: bool = False) -> RunResult:
    """Train or distil as the spec says, as ``kdzoo run`` does, and return the results.

    - ``spec_or_path``: a :class:`Spec`, a spec file or a spec dict (then validated by
      :func:`load_spec`); with ``resume=True``, the run directory to continue.
    - ``out``: the run directory (``--out``; default ``OUTPUT_DIR/NAME-TIMESTAMP``, a grid's
      ``OUTPUT_DIR/NAME``, so that a rerun skips the arms that finished).
    - ``arms``: grids only, the arms to run: glob(s) matched against arm names (``--arms``).
    - ``fuse``: grids: arms that share data, teachers and schedule length train in one pass.
    - ``resume``: continue the interrupted run in ``spec_or_path`` from its last finished
      epoch (``--resume``; a grid resumes by running its spec again).
    - ``quiet``: no progress bars; ``log``: where the progress lines and tables go
      (``None``: nowhere); ``force``: as ``--force``.

    Inline teachers are trained once and cached by content under ``OUTPUT_DIR/teachers``; a
    grid over seeds also writes the study report. A failed single run raises its
    ``TrainingError``; a grid's failed arms are listed in ``RunResult.failed``."""
    from kdzoo.run import runner

    log = log or (lambda _message: None)
    progress = True if quiet else None  # tqdm's `disable`: None = bars only on a TTY
    if resume:
        if out is not None or arms is not None:
            raise KdzooError("resume: give the run directory as spec_or_path, and no out or arms")
        if not isinstance(spec_or_path, (str, Path)):
            raise KdzooError("resume: spec_or_path must be the run directory to continue; a grid resumes by running its spec again")
        outcome = runner.resume_run(Path(spec_or_path), (), _load_host, log=log, progress=progress, force=force)
        return _result(outcome)
    spec = spec_or_path if isinstance(spec_or_path, Spec) else load_spec(spec_or_path)
    patterns = arms if arms is None or isinstance(arms, str) else ",".join(arms)
    plan = runner.plan_runs(spec.data, spec.runs, Path(out) if out is not None else None, patterns)
    outcome = runner.run_plan(plan, spec.host, spec.source, log=log, progress=progress, force=force, fuse=fuse)
    return _result(outcome)


def _result(outcome) -> RunResult:
    summaries = dict(outcome.results)
    run_dirs = {name: rundir.arm_dir(outcome.run_dir, name) if outcome.grid else outcome.run_dir for name in summaries}
    report_dir = outcome.report.files[0].parent if outcome.report is not None and outcome.report.files else None
    return RunResult(
        run_dir=outcome.run_dir,
        summaries=summaries,
        final={name: summary.get("final", {}) for name, summary in summaries.items()},
        failed=list(outcome.failed),
        run_dirs=run_dirs,
        grid=outcome.grid,
        report_dir=report_dir,
    )


def load_model(run_dir_or_checkpoint: str | Path, device: str = "cpu", plugins_dirs: Iterable[str | Path] = ()) -> nn.Module:
    """The trained model of a finished run, ready for inference: a ``kdzoo.api.Network`` in
    eval mode on ``device``, taking float RGB images ``(B, 3, H, W)`` in [0, 1] at the
    dataset's size and returning logits ``(B, num_classes)``: the resize and normalisation
    are inside (``Network.preprocess``), exactly as kdzoo evaluated it.

    Takes a run directory (a grid's arm: ``RunResult.run_dirs[arm]``), a cached teacher's
    folder, or a checkpoint file (``model.safetensors`` or its ``model.json``). The model is
    rebuilt by its plugin (the run's own plugin files are loaded, and ``plugins_dirs``) and
    its weights' sha256 checked. Loss modules (connectors) are not part of it, except the
    head a loss supplies for the student to predict through: a SimKD student predicts
    through its projector and the teacher's classifier, saved in its checkpoint. Either
    way this is the model its metrics describe (docs/python-api.md).

    A directory that is not a finished run (a grid, a failed, stopped or running run)
    raises ``KdzooError`` saying which."""
    from kdzoo.run.export import load_network

    network, _ = load_network(Path(run_dir_or_checkpoint), _load_host, _folders(plugins_dirs))
    return network.to(device).eval()


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's summary.json: ``final`` metrics, ``role``, epochs, times, teachers."""
    from kdzoo.run.export import check_finished_run

    path = Path(run_dir)
    check_finished_run(path)
    if not path.is_dir():
        raise KdzooError(f"load_summary: {path} is a file; give the run directory")
    summary = rundir.read_json(path / rundir.SUMMARY_FILE)
    if summary is None:
        raise KdzooError(f"{path / rundir.SUMMARY_FILE} is not a JSON object (damaged?)")
    return summary


def _folders(dirs: Iterable[str | Path]) -> tuple[Path, ...]:
    return tuple(Path(d) for d in ([dirs] if isinstance(dirs, (str, Path)) else dirs))


def _load_host(plugin_files: list[Path]) -> PluginHost:
    """The plugin host, with these plugin files; what the CLI prints as warnings (a plugin
    that did not load) are Python warnings here."""
    from kdzoo.host.loading import get_host_with_files

    host = get_host_with_files(list(plugin_files))
    for plugin, reason in host.registry.failures.items():
        warnings.warn(f"plugin '{plugin}' was not loaded: {reason}", stacklevel=3)
    for message in host.warnings:
        warnings.warn(message, stacklevel=3)
    return host
