"""The results table of docs/zoo.md, from a finished run of examples/zoo-cifar10.yaml.

    python examples/zoo_table.py runs/zoo-cifar10 [--costs runs/zoo-cifar10-costs] [--curve runs/zoo-cifar10-ce-curve]

One row per method (arms ``<method>_seed<N>``): test top-1, fidelity to the teacher and
the generalisation gap (train minus test top-1) as mean ± std over the seeds, the paired
gain over CE alone (same seed), and the connector parameters. Seconds per epoch come from
``--costs``, a grid of the same arms run with ``--fuse off`` (in a fused pass every arm
reports the pass's time), usually at a shorter budget: ``--set epochs=2``; an arm that
trained by itself in GRID (a method with stages does not fuse) gives its own. The published
CIFAR-100 top-1 is the one each recipe targets for ResNet-32x4 -> ResNet-8x4 (the
``Target`` line of examples/recipes/*/<method>.yaml), and the ordering of the two is
compared by Spearman's rank correlation. ``--curve`` prints CE's test top-1 at each budget
of examples/zoo-cifar10-ce-curve.yaml.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdzoo import rundir  # noqa: E402
from kdzoo.study.quantities import spread  # noqa: E402
from kdzoo.tables import markdown_table  # noqa: E402

TOP1, FIDELITY = "test/top1/student", "test/fidelity/student~ensemble"
TRAIN_TOP1 = "train/top1/student"
DEAD_TOP1 = 0.15  # a student at or below this test top-1 has died (chance on CIFAR-10: 0.10)
RECIPES = Path(__file__).resolve().parent / "recipes"
PAIR = re.compile(r"32x4\s*->\s*(?:resnet-?)?8x4", re.IGNORECASE)


def arms(grid: Path) -> dict[str, tuple[dict, dict]]:
    """Arm name -> (summary, resolved spec), in the grid's order (grid.json)."""
    order = json.loads((grid / rundir.GRID_FILE).read_text())["arms"]
    found = {}
    for name in order:
        arm = rundir.arm_dir(grid, name)
        if not (arm / rundir.SPEC_FILE).is_file():
            continue  # not started yet
        if rundir.is_finished(arm):
            summary = json.loads((arm / rundir.SUMMARY_FILE).read_text())
        else:  # failed (its failed.json says why), or still running
            summary = {"failed": (rundir.read_json(arm / rundir.FAILED_FILE) or {}).get("error"), "unfinished": True}
        found[name] = (summary, yaml.safe_load((arm / rundir.SPEC_FILE).read_text()))
    return found


def by_method(results: dict[str, tuple[dict, dict]]) -> dict[str, dict[int, tuple[dict, dict]]]:
    """Method -> seed -> (summary, spec), methods in grid order."""
    grouped: dict[str, dict[int, tuple[dict, dict]]] = {}
    for name, (summary, spec) in results.items():
        method, _, seed = name.rpartition("_seed")
        grouped.setdefault(method or name, {})[int(seed or 0)] = (summary, spec)
    return grouped


def published_target(method: str) -> float | None:
    """The ResNet-32x4 -> ResNet-8x4 CIFAR-100 top-1 the method's recipe targets, if it states one."""
    for family in ("logit", "feature"):
        path = RECIPES / family / f"{method}.yaml"
        if not path.exists():
            continue
        header = " ".join(line[2:] for line in path.read_text().splitlines() if line.startswith("# "))
        start = header.find("Target")
        if start < 0:
            return None
        sentence = header[start:start + 200]
        head = sentence[:30].lower()
        number = re.search(r"(\d{2}\.\d{2})", sentence)
        if "none" in head or "not verified" in head or number is None:
            return None
        pair = re.search(r"\S+\s*->\s*\S+", sentence[number.end():])  # the first pair named after the number
        return float(number.group(1)) if pair and PAIR.search(pair.group(0)) else None
    return None


def mean_std(values: list[float], digits: int = 4) -> str:
    found = spread(values)  # the study's mean and sample std
    return "" if found.mean is None else f"{found.mean:.{digits}f} ± {(found.std or 0.0):.{digits}f}"


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        rank = [0.0] * len(values)
        i = 0
        while i < len(order):  # ties share their mean rank
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                rank[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return rank

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def seconds_per_epoch(summary: dict) -> float | None:
    return None if "unfinished" in summary else summary["train_time_s"] / summary["epochs"]


def method_label(spec: dict, method: str) -> str:
    terms = [f"{t['name']} {t.get('weight', 1.0):g}" for t in spec["losses"]]
    return " + ".join(terms) + (" (dot optimizer)" if spec["optimizer"]["name"] == "dot" else "") + (
        " (stages: " + ", ".join(f"{s['name']} {s['epochs']}" for s in spec["stages"]) + ")" if spec.get("stages") else "")


def results_table(grid: Path, costs: Path | None) -> tuple[str, list[tuple[str, float, float]]]:
    methods = by_method(arms(grid))
    timed = by_method(arms(costs)) if costs else {}
    ce = {seed: s["final"][TOP1] for seed, (s, _) in methods["ce"].items() if "unfinished" not in s}
    kd_time = next((seconds_per_epoch(s) for s, _ in timed.get("kd", {}).values()), None)
    rows, ranked = [], []
    for method, seeds in methods.items():
        done = {seed: s["final"] for seed, (s, _) in seeds.items() if "unfinished" not in s}
        spec = next(iter(seeds.values()))[1]
        top1 = [f[TOP1] for f in done.values()]
        gains = [f[TOP1] - ce[seed] for seed, f in done.items() if seed in ce]
        gap = [f[TRAIN_TOP1] - f[TOP1] for f in done.values() if TRAIN_TOP1 in f]
        alone = [s for s, _ in seeds.values() if "unfinished" not in s and not s.get("fused_with")]  # trained by itself
        cost = next((seconds_per_epoch(s) for s, _ in [*timed.get(method, {}).values(), *((a, None) for a in alone)]), None)
        connectors = next((s.get("connector_parameters", 0) for s, _ in seeds.values() if "unfinished" not in s), None)
        target = published_target(method)
        failed = sum(1 for s, _ in seeds.values() if s.get("failed"))
        running = sum(1 for s, _ in seeds.values() if s.get("unfinished") and not s.get("failed"))
        dead = sum(1 for value in top1 if value <= DEAD_TOP1)
        if top1 and target is not None:
            ranked.append((method, statistics.mean(top1), target, dead))
        status = ", ".join(f"{count} {text}" for count, text in ((failed, "failed"), (running, "not finished"), (dead, "died")) if count)
        rows.append([f"`{method}`" + (f" ({status})" if status else ""), method_label(spec, method),
                     mean_std(top1), "" if method == "ce" else mean_std([100 * g for g in gains], 2),
                     mean_std([f[FIDELITY] for f in done.values()]), mean_std(gap, 3),
                     f"{cost:.1f}" if cost else "", f"{cost / kd_time:.2f}" if cost and kd_time else "",
                     "" if connectors is None else f"{connectors:,}", "" if target is None else f"{target:.2f}"])
    headers = ["method", "losses (weights as published)", "test top-1", "vs CE (points, paired)", "fidelity to teacher",
               "train - test gap", "s / epoch", "cost vs kd", "connector params", "published (CIFAR-100)"]
    return markdown_table(headers, rows), ranked


def ordering_summary(ranked: list[tuple[str, float, float, int]]) -> str:
    """The two orderings and their rank correlation, over every method with a published
    number and again over those none of whose seeds died."""
    lines = []
    for label, rows in (("", ranked), (" whose students all trained", [r for r in ranked if not r[3]])):
        rho = spearman([r[1] for r in rows], [r[2] for r in rows])
        lines.append(f"Spearman rank correlation with the published CIFAR-100 top-1 over the {len(rows)} methods{label}: {rho:+.2f}")
    lines += ["here, best first:      " + ", ".join(r[0] for r in sorted(ranked, key=lambda r: -r[1])),
              "published, best first: " + ", ".join(r[0] for r in sorted(ranked, key=lambda r: -r[2]))]
    return "\n".join(lines)


def curve_table(curve: Path) -> str:
    rows = {}
    for summary, spec in arms(curve).values():
        if "unfinished" not in summary:
            rows.setdefault(spec["epochs"], []).append(summary["final"])
    return markdown_table(["epochs", "CE test top-1", "CE train top-1"],
                          [[epochs, mean_std([f["test/top1/model"] for f in finals]), mean_std([f["train/top1/model"] for f in finals])]
                           for epochs, finals in sorted(rows.items())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path)
    parser.add_argument("--costs", type=Path, help="the same arms run with --fuse off (per-arm seconds per epoch)")
    parser.add_argument("--curve", type=Path, help="a finished run of examples/zoo-cifar10-ce-curve.yaml")
    args = parser.parse_args()
    if args.curve:
        print(curve_table(args.curve) + "\n")
    table, ranked = results_table(args.grid, args.costs)
    print(table + "\n")
    print(ordering_summary(ranked))


if __name__ == "__main__":
    main()
