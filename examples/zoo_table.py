"""The results table of docs/zoo.md, from a finished run of examples/zoo-cifar10.yaml.

    python examples/zoo_table.py runs/zoo-cifar10 [--costs runs/zoo-cifar10-off]

Accuracy, fidelity and connector parameters come from GRID's arms. Seconds per epoch
come from ``--costs`` (the same grid run with ``--fuse off``, where each arm's epoch is
its own; in a fused pass every arm reports the pass's time) or from GRID itself when it
ran unfused. With ``--costs``, every arm's final figures must be identical in both
grids (fused arms train bit for bit as separate runs): the script checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdzoo import rundir  # noqa: E402
from kdzoo.tables import markdown_table  # noqa: E402

TOP1, FIDELITY = "test/top1/student", "test/fidelity/student~ensemble"


def arms(grid: Path) -> dict[str, tuple[dict, dict]]:
    """Arm name -> (summary, resolved spec), in the grid's order (grid.json)."""
    order = json.loads((grid / rundir.GRID_FILE).read_text())["arms"]
    found = {}
    for name in order:
        arm = rundir.arm_dir(grid, name)
        summary = json.loads((arm / rundir.SUMMARY_FILE).read_text()) if rundir.is_finished(arm) else {"failed": True}
        found[name] = (summary, yaml.safe_load((arm / rundir.SPEC_FILE).read_text()))
    return found


def seconds_per_epoch(summary: dict) -> float | None:
    return None if "failed" in summary else summary["train_time_s"] / summary["epochs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path)
    parser.add_argument("--costs", type=Path, help="the same grid run with --fuse off (per-arm seconds per epoch)")
    args = parser.parse_args()
    results = arms(args.grid)
    costs = arms(args.costs) if args.costs else results
    if args.costs:
        differ = [n for n, (s, _) in results.items() if "failed" not in s and s["final"] != costs[n][0].get("final")]
        if differ:
            raise SystemExit(f"final figures differ between {args.grid} and {args.costs}: {', '.join(differ)}")
    kd_cost = seconds_per_epoch(costs["ce-kd"][0])
    rows = []
    for name, (summary, spec) in results.items():
        method = spec["losses"][-1] if len(spec["losses"]) > 1 else {"name": "ce alone (no KD)"}
        cost = seconds_per_epoch(costs[name][0])
        final = summary.get("final", {})
        weight = method.get("weight")
        rows.append([f"`{name}`" + (" (failed)" if "failed" in summary else ""), method["name"], "" if weight is None else f"{weight:g}",
                     final.get(TOP1), final.get(FIDELITY), f"{cost:.1f}" if cost else None,
                     f"{cost / kd_cost:.2f}" if cost and kd_cost else None, f"{summary.get('connector_parameters', 0):,}"])
    print(markdown_table(["arm", "method", "weight", "test top-1", "fidelity to teacher", "s / epoch", "cost vs kd", "connector params"], rows))
    if args.costs:  # the sweep's wall time both ways: one pass (every fused arm reports it) against the arms' sum
        fused = max(s["wall_time_s"] for s, _ in results.values() if "failed" not in s)
        alone = sum(s["wall_time_s"] for s, _ in costs.values() if "failed" not in s)
        print(f"\nthe arms' wall time: {fused:,.0f} s in {args.grid} (fused), {alone:,.0f} s in {args.costs} (one by one): "
              f"{alone / fused:.2f}x")


if __name__ == "__main__":
    main()
