"""The entry point of a teacher job: train one inline teacher of one arm into the cache.

``python -m kdzoo.run.launchers.worker SPEC --arm ARM --teacher NAME [--set k=v] [--plugins-dir D]``
reads the spec exactly as ``kdzoo run`` does (same overrides, same validation), so the
teacher's cache key is the one the arm's own run computes and it finds the teacher
ready. Training goes through :func:`kdzoo.run.teachers.cached_teacher`: under its lock,
in its ``.partial`` folder, published by a rename — never trained twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdzoo.errors import KdzooError


def train_teacher(spec_path: Path, arm: str, teacher_name: str, overrides: list[str], plugins_dirs: list[Path],
                  progress: bool | None) -> Path:
    from kdzoo.host.loading import get_host_with_files
    from kdzoo.run import runner
    from kdzoo.run.teachers import cached_teacher, teacher_dir
    from kdzoo.spec import DistillSpec, load_spec
    from kdzoo.spec.plugin_files import plugin_files_of

    host = get_host_with_files(plugin_files_of(spec_path, plugins_dirs, overrides))
    _, runs = load_spec(spec_path, host.registry, overrides)
    spec = dict(runs).get(arm)
    if not isinstance(spec, DistillSpec):
        raise KdzooError(f"{spec_path}: no distill arm named '{arm}'")
    teacher = next((t for t in spec.teachers if t.name == teacher_name and t.train is not None), None)
    if teacher is None:
        raise KdzooError(f"{spec_path}: arm '{arm}' has no inline teacher named '{teacher_name}'")
    path = teacher_dir(teacher.train)
    cached_teacher(teacher.name, teacher.train, path, runner.teacher_trainer(host, print, progress), print)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdzoo.run.launchers.worker", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--arm", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--plugins-dir", dest="plugins_dirs", action="append", type=Path, default=[])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        train_teacher(args.spec, args.arm, args.teacher, args.overrides, args.plugins_dirs, True if args.quiet else None)
    except KdzooError as exc:  # as the CLI reports it: one line, the error's exit code
        from kdzoo.host.build import debug_enabled

        if debug_enabled():
            raise
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
