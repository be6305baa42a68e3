"""Running a grid's arms beyond one process: as separate processes on this machine
(``--launcher local --jobs K``) or as a SLURM job array through submitit
(``--launcher slurm``). Each job is the very command a user could type — ``kdzoo run SPEC
--arms ARM`` with the same ``--set`` overrides — so a launched arm is exactly the arm
run in-process: same resolved spec, same skip and resume rules, same run directory.

Modules: :mod:`.grid` (which jobs, in which order, and their results), :mod:`.jobs`
(one job's command line and environment), :mod:`.local` (a process pool),
:mod:`.slurm` (submitit, imported only when used), :mod:`.worker` (the entry point that
trains one cached teacher), :mod:`.running` (the marker a live run keeps in its
directory) and :mod:`.status` (what ``kdzoo status`` reports). Torch-free, except what
the jobs themselves run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kdzoo.errors import KdzooError

LAUNCHERS = ("inline", "local", "slurm")


@dataclass(frozen=True)
class LaunchOptions:
    """What ``kdzoo run`` was told about launching: the launcher and the flags that
    override the spec's ``launcher:`` section."""

    launcher: str = "inline"
    jobs: int | None = None
    partition: str | None = None
    time_min: int | None = None
    gpus_per_arm: int | None = None

    def check(self) -> None:
        """Flags that mean nothing for the chosen launcher are refused, not ignored."""
        if self.jobs is not None and self.launcher == "inline":
            raise KdzooError("--jobs runs arms as separate processes: add --launcher local (or slurm)")
        slurm_flags = [flag for flag, value in (("--partition", self.partition), ("--time", self.time_min),
                                                 ("--gpus-per-arm", self.gpus_per_arm)) if value is not None]
        if slurm_flags and self.launcher != "slurm":
            raise KdzooError(f"{', '.join(slurm_flags)}: only for --launcher slurm")
        if self.launcher != "inline" and "WORLD_SIZE" in os.environ:  # a torchrun rank (--nproc): each would launch the grid
            raise KdzooError(f"--launcher {self.launcher} starts processes of its own: not with --nproc or under torchrun")

    def require_grid(self, what: str) -> None:
        if self.launcher != "inline":
            raise KdzooError(f"--launcher {self.launcher} runs the arms of a grid (a spec with matrix:); {what} is none")
