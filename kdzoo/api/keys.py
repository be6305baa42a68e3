"""Metric keys: the one naming scheme for every figure kdzoo records (core and plugins alike).

A metric's ``compute`` returns keys without a split; the evaluator prefixes the split:

- ``"<quantity>/<role>"`` for one model, e.g. ``"top1/student"``, ``"entropy/ensemble"``;
- ``"<quantity>/<left>~<right>"`` for a pair, e.g. ``"fidelity/student~t1"``;
- recorded as ``"<split>/<quantity>/<role>"``, e.g. ``"test/top1/student"``.

Roles: ``"model"`` in a train run; ``"student"`` and the teachers' names in a distill
run; ``"ensemble"`` is the mean of the teachers' logits (the study's ensemble).
Torch-free, so the report and the CLI can use it cheaply.
"""

from __future__ import annotations

ENSEMBLE = "ensemble"  # the role name of the teachers' mean logits (``role_logits``, ``role_pairs``)
TRAIN_ROLE = "model"  # the trained model of a train run
STUDENT_ROLE = "student"  # the trained model of a distill run
SPLITS = ("train", "test", "test_aug")  # what `eval.splits` may name


def role_key(quantity: str, role: str) -> str:
    """``top1/student``: a figure of one model."""
    return f"{quantity}/{role}"


def pair_key(quantity: str, left: str, right: str) -> str:
    """``fidelity/student~t1``: a figure of a pair of models (the student on the left)."""
    return f"{quantity}/{left}~{right}"


def split_key(split: str, key: str) -> str:
    """``test/top1/student``: a metric's key as recorded for one evaluation split."""
    return f"{split}/{key}"


def metric_key(split: str, quantity: str, role: str) -> str:
    return split_key(split, role_key(quantity, role))


def pair_metric_key(split: str, quantity: str, left: str, right: str) -> str:
    return split_key(split, pair_key(quantity, left, right))


def trained_role(kind: str) -> str:
    """The role name of the model a run of ``kind`` ('train' or 'distill') trains."""
    return TRAIN_ROLE if kind == "train" else STUDENT_ROLE
