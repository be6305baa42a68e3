"""Study commands of the ``kdzoo`` CLI: ``report`` (tables, findings, plots of finished runs)
and ``affinity`` (augmentation strength of each policy), attached through ``register_commands``.

Implementations live in :mod:`kdzoo.study.report` and :mod:`kdzoo.study.affinity`, imported inside the
commands so that ``kdzoo --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from kdzoo import hookimpl
from kdzoo.cli.common import load_host_with_warnings


def _names(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else default


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Where study.csv, study.md and the plots go (default: RUN_DIR).")
@click.option("--strong", "strong", metavar="A,B", help="Policies counted as strong teacher augmentation (default: strong, paper-strong, randaugment, autoaugment).")
@click.option("--weak", "weak", metavar="A,B", help="Policies counted as weak teacher augmentation (default: weak, paper-weak, none).")
@click.option("--affinity", "affinity", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="affinity.csv of `kdzoo affinity`: orders the teacher policies by strength (replaces --strong/--weak).")
@click.option("--baseline", "baseline", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The CE-only student runs (a grid or one run) for the regime checks.")
def report(run_dir: Path, out_dir: Path | None, strong: str | None, weak: str | None, affinity: Path | None, baseline: Path | None) -> None:
    """Tables, findings and plots of the study from RUN_DIR (a grid or one run).

    Arms that differ only by seed are grouped: mean and spread over seeds. Each
    finding is decided on matched pairs (same teacher count, student policy and seed)
    between the strongest and the weakest teacher policy: the mean difference, its 95%
    paired-t interval and effect size, and held / reversed / inconclusive. Writes
    study.csv, study.md and PNG plots, and prints the regime checks, the table and the
    findings.
    """
    from kdzoo.study import report as study
    from kdzoo.study.regime import regime_markdown

    result = study.build_report(
        run_dir,
        out_dir,
        strong=_names(strong, study.STRONG_POLICIES),
        weak=_names(weak, study.WEAK_POLICIES),
        log=lambda message: click.echo(message, err=True),
        affinity=affinity,
        baseline=baseline,
    )
    click.echo(regime_markdown(result.checks))
    click.echo("")
    if result.strength_table:
        click.echo(f"strength axis ({result.scale.source}):")
        click.echo(result.strength_table)
        click.echo("")
    click.echo(result.table)
    click.echo("")
    click.echo(study.findings_markdown(result.findings))
    click.echo("")
    click.echo(f"wrote {len(result.files)} files to {result.files[0].parent}: " + ", ".join(p.name for p in result.files[:4]) + (" ..." if len(result.files) > 4 else ""))
    for name in result.skipped_plots:
        click.echo(f"not drawn: {name}", err=True)


@click.command()
@click.argument("source", metavar="SPEC_OR_CHECKPOINT", type=click.Path(path_type=Path, exists=True))
@click.option("--policies", "policies", multiple=True, metavar="P[:k=v,...],...",
              help="Augmentations to measure, comma-separated, with params after a colon "
                   "(e.g. none,strong,randaugment:magnitude=5); default: every registered one.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Output directory (default: OUTPUT_DIR/NAME-affinity for a spec, CHECKPOINT_DIR/affinity for a checkpoint).")
@click.option("--seed", default=0, show_default=True, help="Seed of the augmentations' random draws.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def affinity(source: Path, policies: tuple[str, ...], out_dir: Path | None, seed: int, quiet: bool) -> None:
    """Augmentation affinity: augmented / clean test top-1 of a model trained without augmentation.

    SPEC_OR_CHECKPOINT is a train spec (trained first, with augmentation forced to
    'none') or a kdzoo checkpoint (a run dir, .safetensors or its .json).
    """
    from kdzoo.study import affinity as aff

    host = load_host_with_warnings()
    chosen = aff.parse_policies(list(policies), host.registry)  # fail on a typo before training
    checkpoint, spec, out_dir = aff.clean_model(source, host, out_dir, log=click.echo, progress=True if quiet else None)
    rows = aff.measure_affinity(checkpoint, spec, host, chosen, seed=seed)
    files = aff.write_affinity(rows, out_dir, source, seed)
    click.echo(aff.affinity_table(rows))
    click.echo(f"wrote {', '.join(str(p) for p in files)}")


@hookimpl
def register_commands(cli):
    for command in (report, affinity):
        cli.add_command(command)
