"""The options of ``kdzoo run`` that choose where a grid's arms run (``--launcher``,
``--jobs`` and the SLURM flags), gathered into one :class:`LaunchOptions` argument so
that ``run`` itself takes a single ``launch`` parameter."""

from __future__ import annotations

import functools

import click

from kdzoo.run.launchers import LAUNCHERS, LaunchOptions


def launch_options(command):
    @click.option("--launcher", type=click.Choice(LAUNCHERS), default="inline", show_default=True,
                  help="Grids: run the arms in this process, as separate processes here (local), or as a SLURM job array (slurm, through submitit).")
    @click.option("--jobs", type=click.IntRange(min=1), default=None, metavar="K",
                  help="local: run up to K arms (and distinct teachers) at once, each with cores/K torch threads unless the spec sets threads; slurm: at most K array tasks at once.")
    @click.option("--partition", default=None, help="slurm: the partition (else launcher.partition).")
    @click.option("--time", "time_min", type=click.IntRange(min=1), default=None, metavar="MINUTES",
                  help="slurm: wall-time limit of each job (else launcher.time_min).")
    @click.option("--gpus-per-arm", type=click.IntRange(min=0), default=None, help="slurm: GPUs of each job (else launcher.gpus_per_arm).")
    @functools.wraps(command)
    def wrapper(*args, launcher, jobs, partition, time_min, gpus_per_arm, **kwargs):
        options = LaunchOptions(launcher, jobs, partition, time_min, gpus_per_arm)
        options.check()
        return command(*args, launch=options, **kwargs)

    return wrapper
