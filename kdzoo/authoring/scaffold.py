"""``kdzoo plugins new NAME``: write a plugin package that installs, passes
``kdzoo plugins check`` and passes its own tests as it stands.

The package holds one sample loss (confidence-weighted KD) to rename and rewrite:
a torch-free hook module with the params model, the implementation in its own module
(imported only when the loss is built), tests built on :mod:`kdzoo.testing`, a README.
Templates are inline so that they ship with kdzoo's code, with no package-data setup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from kdzoo import __version__
from kdzoo.errors import KdzooError

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]*([-_][A-Za-z0-9]+)*$")
PREFIX = "kdzoo-"

# The plugin API the generated package needs: the newest thing its template uses is
# Params (1.1). A plugin declares the lowest version it needs, not the newest there is.
TEMPLATE_API = (1, 1)


@dataclass(frozen=True)
class PluginNames:
    """Every name a new plugin needs, derived from the one the user gives."""

    distribution: str  # kdzoo-confidence: what pip and `kdzoo install` see
    module: str  # kdzoo_confidence: the hook module
    loss: str  # confidence: the sample loss's component name (what specs use)
    class_prefix: str  # Confidence: for ConfidenceLoss / ConfidenceParams

    @property
    def entry_point(self) -> str:
        return self.distribution  # as the built-ins do: one plugin per distribution, same name


def plugin_names(name: str) -> PluginNames:
    if not NAME_PATTERN.match(name):
        raise KdzooError(
            f"'{name}' cannot name a plugin: use letters, digits and single '-' or '_' between them, "
            f"starting with a letter (e.g. {PREFIX}confidence)"
        )
    distribution = name.lower().replace("_", "-")
    if distribution == "kdzoo":
        raise KdzooError(f"'{name}' is kdzoo itself; name the plugin {PREFIX}<what it adds>, e.g. {PREFIX}confidence")
    short = distribution.removeprefix(PREFIX)
    return PluginNames(
        distribution=distribution,
        module=distribution.replace("-", "_"),
        loss=short,
        class_prefix="".join(part.capitalize() for part in short.split("-")),
    )


def create_plugin(name: str, root: Path | None = None, from_file: Path | None = None) -> Path:
    """Write the package for plugin ``name`` into ``root`` (default: ``./<name>``) and return it.

    ``from_file``: a single-file plugin (a prototype used with ``plugins: [file.py]``)
    becomes the package's hook module as it is, with a test that runs ``plugins check``.
    """
    names = plugin_names(name)
    root = Path(root) if root is not None else Path(names.distribution)
    if root.exists() and any(root.iterdir()):
        raise KdzooError(f"{root} already exists and is not empty; choose another NAME or --dir")
    values = {
        "distribution": names.distribution,
        "entry_point": names.entry_point,
        "module": names.module,
        "loss": names.loss,
        "Loss": f"{names.class_prefix}Loss",
        "Params": f"{names.class_prefix}Params",
        "kdzoo_version": ".".join(__version__.split(".")[:2]),
        "api": repr(TEMPLATE_API),
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{names.module}/__init__.py": HOOK_MODULE,
        f"{names.module}/loss.py": LOSS_MODULE,
        f"tests/test_{names.module}.py": TESTS,
    }
    if from_file is not None:
        source = Path(from_file).read_text(encoding="utf-8")
        values["source"] = Path(from_file).name
        files = {
            "pyproject.toml": PYPROJECT.replace("a confidence-weighted knowledge-distillation loss", "from $source"),
            "README.md": FROM_FILE_README,
            f"{names.module}/__init__.py": source.replace("$", "$$"),  # the file as it is
            f"tests/test_{names.module}.py": FROM_FILE_TESTS,
        }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- templates
PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "kdzoo plugin: $loss, a confidence-weighted knowledge-distillation loss"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["kdzoo>=$kdzoo_version"]

[project.optional-dependencies]
test = ["pytest>=7"]

# kdzoo finds plugins through this entry-point group: name = "hook module".
[project.entry-points.kdzoo]
$entry_point = "$module"

[tool.setuptools.packages.find]
include = ["$module*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

HOOK_MODULE = '''\
"""$distribution: a kdzoo plugin (the hook module kdzoo imports when it loads plugins).

Keep this module cheap to import (no torch): `kdzoo plugins` and spec validation import
it. The loss itself lives in $module.loss, named by the "module:Class" factory string
below, and is imported only when a run builds it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kdzoo import hookimpl

# The kdzoo plugin API this plugin is written against (kdzoo refuses to load it if
# it provides an older one). See docs/plugins.md, "Plugin API versions".
KDZOO_PLUGIN_API = $api


class $Params(BaseModel):
    """Parameters of the '$loss' loss: validated when a spec is checked, before any training."""

    # Unknown keys are errors, so a misspelt parameter in a spec is caught.
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(4.0, gt=0, description="softmax temperature T of teacher and student; the loss is T^2-scaled")
    power: float = Field(
        1.0, ge=0, description="per-sample weight = (teacher probability of the true class) ** power; 0 gives plain KD"
    )


@hookimpl
def register_losses(register):
    register(
        "$loss",
        "$module.loss:$Loss",
        params=$Params,
        description="KD weighted per sample by the teacher's confidence in the true class",
    )
'''

LOSS_MODULE = '''\
"""The '$loss' loss (imports torch; kdzoo imports this module only when a run builds the loss)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs


class $Loss(Loss):
    """Confidence-weighted KD: ``T^2 * mean_i w_i * KL(softmax(t_i/T) || softmax(s_i/T))``.

    ``w_i`` is the teacher's probability of the true class raised to ``power``,
    normalised to mean 1 over the batch: samples the teacher gets right and is sure
    of count more, those it gets wrong count less. ``power = 0`` is Hinton KD.

    kdzoo averages ``pair`` over the teachers (override ``forward`` for another rule).
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        temperature = self.params.temperature
        # Logits may arrive in bf16 under autocast: work in fp32. Detach the teacher:
        # no gradient may reach it (`kdzoo plugins check` tests this).
        teacher_logits = teacher.logits.detach().float()
        student_log_probs = F.log_softmax(student.logits.float() / temperature, dim=1)
        teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
        kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(dim=1)
        confidence = teacher_logits.softmax(dim=1).gather(1, batch.targets.view(-1, 1)).squeeze(1)
        weights = confidence.pow(self.params.power)
        weights = weights / weights.mean().clamp_min(1e-12)
        return (weights * kl).mean() * temperature**2
'''

TESTS = '''\
"""Tests of the '$loss' loss, on kdzoo's tiny networks (a few milliseconds each)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from kdzoo.authoring.check import check_plugin
from kdzoo.testing import isolated_host, make_distill_batch, tiny_network_pair

import $module


def build(**params):
    """The loss as kdzoo builds it from a spec: params validated by the plugin's params model."""
    return isolated_host($module).registry.build("loss", "$loss", params)


def test_loss_is_a_finite_scalar_that_trains_only_the_student():
    loss = build()
    student, teacher = tiny_network_pair()
    batch = make_distill_batch(loss, student, teacher, teacher_requires_grad=True)
    value = loss(batch)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert batch.images.grad is not None and batch.images.grad.abs().sum() > 0
    assert batch.teachers[0].logits.grad is None


def test_power_zero_is_hinton_kd():
    loss = build(power=0.0, temperature=2.0)
    student, teacher = tiny_network_pair()
    batch = make_distill_batch(loss, student, teacher)
    s, t = batch.student.logits / 2.0, batch.teachers[0].logits / 2.0
    expected = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True) * 4.0
    torch.testing.assert_close(loss(batch), expected)


def test_bad_params_are_refused():
    with pytest.raises(ValidationError):
        build(temperature=0)
    with pytest.raises(ValidationError):
        build(temprature=2.0)  # misspelt: unknown keys are errors


def test_plugin_passes_kdzoo_plugins_check():
    report = check_plugin("$module")
    assert report.ok, report.to_text()
'''

FROM_FILE_TESTS = '''\
"""$distribution: the plugin file $source, packaged. Add tests of its components here."""

from kdzoo.authoring.check import check_plugin


def test_plugin_passes_kdzoo_plugins_check():
    report = check_plugin("$module")
    assert report.ok, report.to_text()
'''

FROM_FILE_README = '''\
# $distribution

A kdzoo plugin, packaged from the single-file plugin `$source`: its hook module is
`$module/__init__.py`, unchanged.

```bash
kdzoo install -e .          # then drop `plugins: [$source]` from your specs
kdzoo plugins check $distribution
python -m pytest
```
'''

README = '''\
# $distribution

A kdzoo plugin adding the `$loss` loss: knowledge distillation
weighted per sample by the teacher's confidence in the true class.

## Install

```bash
kdzoo install -e .          # or: python -m pip install -e .
kdzoo plugins               # $entry_point should be listed, with loss: $loss
kdzoo plugins check $distribution
```

## Use it in a spec

```yaml
losses:
  - {name: ce, weight: 0.5}
  - {name: $loss, weight: 0.5, params: {temperature: 4, power: 1}}
```

## Develop

- `$module/__init__.py`: the hook module (no torch): params model and `register_losses`.
- `$module/loss.py`: the loss (a `kdzoo.api.Loss`).
- `tests/`: `python -m pytest` (helpers from `kdzoo.testing`).

Rename the loss, change the maths, keep `kdzoo plugins check $distribution` green.
See kdzoo's `docs/plugins.md` for the hooks, the plugin API versions and publishing.
'''
