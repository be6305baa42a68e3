"""The core's default component names: the one table of every name the core assumes a
plugin provides (the built-ins do). A spec that relies on a default whose plugin is not
installed fails validation like any other unknown name."""

from __future__ import annotations

DEFAULTS = {
    "dataset": "synthetic-shapes",
    "augmentation": "weak",
    "train_losses": [{"name": "ce"}],
    # the study's 0.6 CE + 0.4 KD at T=3
    "distill_losses": [{"name": "ce", "weight": 0.6}, {"name": "kd", "weight": 0.4, "params": {"temperature": 3.0}}],
    "train_metrics": ["accuracy"],
    "distill_metrics": ["accuracy", "fidelity"],
    "clean_augmentation": "none",  # `kdzoo affinity`: the policy of the model it measures with
    "affinity_metric": {"name": "accuracy", "params": {"topk": [1]}},
}
