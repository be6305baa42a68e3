"""Function-consistent feature distillation: features judged by what the other network's later
stages make of them, through bridges between the two networks' stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from kdzoo.api import DistillBatch, ModelOutputs, Network, SetupContext
from kdzoo_feature_losses import FCFDParams
from kdzoo_feature_losses._base import LayerPair, TappedLoss, describe_shape

#: relative error up to which a re-run stage counts as reproducing the tapped output (loose
#: enough for bf16 autocast, far below what a missing layer between two stages gives)
CHAIN_TOLERANCE = 0.05


def make_bridge(source: torch.Size, target: torch.Size, activation: bool) -> nn.Sequential:
    """The reference's bridge from a stage output of one network to the same stage of the other:
    3x3 conv (no bias) + BN at equal sizes; a stride-2 3x3 conv (with bias) when the source is
    twice as large; a 4x4 stride-2 transposed conv (with bias) when it is half as large; then
    LeakyReLU(0.1) if ``activation``."""
    (c_in, h_in, w_in), (c_out, h_out, w_out) = source[1:], target[1:]
    if (h_in, w_in) == (h_out, w_out):
        conv: nn.Module = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False)
    elif (h_in, w_in) == (2 * h_out, 2 * w_out):
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
    elif (2 * h_in, 2 * w_in) == (h_out, w_out):
        conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
    else:
        raise ValueError(
            f"fcfd: cannot bridge a {describe_shape(source)} stage output to {describe_shape(target)}: "
            "the spatial sizes must be equal or differ by a factor of 2, as in the reference"
        )
    if isinstance(conv, nn.Conv2d):  # the reference initialises its Conv2d only
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    layers = [conv, nn.BatchNorm2d(c_out)]
    if activation:
        layers.append(nn.LeakyReLU(negative_slope=0.1))
    return nn.Sequential(*layers)


class Bridges(nn.Module):
    """One teacher's bridges: ``to_teacher[k]`` maps student stage ``k`` into the teacher's stage
    ``k`` space (every stage: the appearance terms use them all); ``to_student[k]`` the reverse
    (all stages but the last, the only ones a mixed path reads)."""

    def __init__(self, pairs: list[LayerPair], activation: bool):
        super().__init__()
        self.to_teacher = nn.ModuleList(make_bridge(p.student_shape, p.teacher_shape, activation) for p in pairs)
        self.to_student = nn.ModuleList(make_bridge(p.teacher_shape, p.student_shape, activation) for p in pairs[:-1])


@dataclass
class Trunk:
    """A network from its first tapped stage on: the stage modules in order, then global
    average pooling and the cam classifier. Held as plain references: the student's modules
    are the student's parameters already, a teacher's are frozen and must not become the loss's."""

    role: str
    paths: list[str]
    stages: list[nn.Module]
    classifier: nn.Module
    keep_statistics: bool  # the student: run mixed paths without touching its BN running statistics

    def stage(self, index: int, x: Tensor) -> Tensor:
        module = self.stages[index]
        if self.keep_statistics and module.training:
            # Batch statistics as in training, running statistics untouched: the reference keeps a
            # separate set for each mixed path (models/meta.py GhostForward) and never reads it.
            buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
            return functional_call(module, buffers, (x,))
        return module(x)

    def head(self, x: Tensor) -> Tensor:
        return self.classifier(x.mean(dim=(2, 3)))


def _trunk(network: Network, paths: list[str], role: str, keep_statistics: bool) -> Trunk:
    if network.cam is None:
        raise ValueError(f"fcfd needs the {role} network's cam head (its classifier after global pooling); it declares none")
    return Trunk(role, paths, [network.submodule(p) for p in paths], network.submodule(network.cam.classifier), keep_statistics)


def _relative_error(value: Tensor, reference: Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm().clamp(min=1e-12))


def check_chain(trunk: Trunk, features: list[Tensor], logits: Tensor) -> None:
    """Raise unless each tapped stage reproduces the next one's tapped output from its own and the
    head reproduces the logits from the last: the loss runs networks from a stage to the logits
    this way, so stages with layers between them would give wrong mixed paths silently."""
    steps = [
        (f"stage '{trunk.paths[k + 1]}' on the output of '{trunk.paths[k]}'", k + 1, features[k], features[k + 1])
        for k in range(len(features) - 1)
    ]
    steps.append((f"the cam classifier on the average-pooled output of '{trunk.paths[-1]}'", None, features[-1], logits))
    for what, stage, given, expected in steps:
        problem = None
        try:
            with torch.no_grad():
                value = trunk.head(given) if stage is None else trunk.stage(stage, given)
        except RuntimeError as exc:  # shapes that do not even fit the module
            problem = str(exc).splitlines()[0]
        else:
            if value.shape != expected.shape:
                problem = f"shape {describe_shape(value.shape)} instead of {describe_shape(expected.shape)}"
            elif (error := _relative_error(value, expected)) > CHAIN_TOLERANCE:
                problem = f"relative error {error:.3g}"
        if problem is not None:
            raise ValueError(
                f"fcfd: the {trunk.role} network is not a chain of its tapped stages followed by global "
                f"average pooling and its cam classifier: {what} does not reproduce the network's own "
                f"output ({problem}). Tap stages that follow one another directly (set {trunk.role}_layers)."
            )


class FunctionConsistentLoss(TappedLoss):
    """FCFD: bridged features must look like the teacher's *and* work in its later stages.

    Liu, Kan, Shan & Chen (2023), "Function-Consistent Feature Distillation", ICLR 2023,
    arXiv:2304.11832.

    Between each pair of tapped stages (all declared stages by default) a bridge maps the
    student's output into the teacher's space and one maps the teacher's into the student's
    (``make_bridge``). Each step:

    - appearance: ``MSE(bridge_st_k(s_k), t_k)`` for every stage ``k``, plus at the last stage
      the MSE of the average-pooled ReLU of both;
    - function: ``extra_paths`` mixed paths drawn without replacement from the candidates
      ("bi": after each stage ``k`` but the last, s2t: ``bridge_st_k(s_k)`` through the
      teacher's stages ``k+1..`` and classifier; t2s: ``bridge_ts_k(t_k)`` through the
      student's stages and classifier). Each path adds ``T^2 * KL(softmax(z_t/T) ||
      softmax(z_path/T))`` (batch mean) to the teacher's logits, and an s2t path also adds the
      MSE of each teacher-stage output it computes to the teacher's own feature there (plus the
      pooled MSE at the last stage), as the reference's L2 terms do;
    - loss = ``appearance_weight * min((epoch+1)/warmup, 1) * sum(L2) + function_weight *
      sum(KL)``; gradients reach the student through the frozen teacher's stages.

    Follows the authors' CIFAR code, LiuDongyang6/FCFD ``classification/models/meta.py``
    (``MetaModel``, ``build_bridge``, ``_create_candidate_path``) and ``classification/cifar/
    main.py`` (``train_one_epoch``, ``_loss_kl``). Defaults: ``experiments/cifar/
    resnet8x4-resnet32x4.yaml`` (T 4, weight_l2 5, mixed-path KL weight 1, "bi", 2 paths,
    20 warm-up epochs); the student's own CE (weight 1) and KD to the teacher (T 4, weight 1)
    are ``ce`` and ``kd`` in the spec. Published weight: 1.

    Running a network from a stage to its logits uses the public API only: the tapped stage
    modules are called in order, then the cam classifier on the global average pool. On its
    first step for each teacher the loss checks that this reproduces both networks' own
    tapped outputs and logits (``check_chain``) and refuses networks where it does not
    (layers between stages, a norm before the pooling). kdzoo's ``cifar-resnet`` passes.

    Differs from the reference: (1) the teacher runs in eval mode (kdzoo freezes teachers), so
    its stages on an s2t path normalise with its running statistics; the reference trains with
    the teacher in train mode, i.e. batch statistics (separate per path), also for the
    teacher's own targets. (2) The student's stages on a t2s path use batch statistics and
    leave its running statistics untouched, which is what the reference's per-path statistics
    amount to in training. (3) The head is the network's own pooling + classifier; the
    reference applies a ReLU before pooling, the same on post-ReLU stage outputs. (4) Networks
    of different depth pair their deepest stages (the reference needs equal stage counts), and
    the paths are drawn with torch's global generator instead of Python's ``random``.
    """

    loss_name = "fcfd"
    params_model = FCFDParams
    default_taps = "all_stages"
    feature_kind = "map"

    def __init__(self, params=None):
        super().__init__(params)
        self._trunks: list[tuple[Trunk, Trunk]] = []  # per teacher: (student, teacher)
        self._checked: list[bool] = []

    # ------------------------------------------------------------------ setup
    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        return Bridges(pairs, activation=self.params.bridge_activation == "leaky_relu")

    def setup(self, context: SetupContext) -> None:
        super().setup(context)
        self._trunks = [
            (
                _trunk(context.student, [p.student_path for p in pairs], "student", keep_statistics=True),
                _trunk(teacher, [p.teacher_path for p in pairs], "teacher", keep_statistics=False),
            )
            for pairs, teacher in zip(self.layer_pairs, context.teachers)
        ]
        self._checked = [False] * len(self._trunks)

    # ------------------------------------------------------------------ paths
    def candidates(self, stages: int) -> list[tuple[str, int]]:
        """(direction, k): leave the first network after its stage k, for k before the last stage,
        t2s ones first (the reference's order)."""
        kind = self.params.path_type
        directions = {"bi": ["t2s", "s2t"], "s2t": ["s2t"], "t2s": ["t2s"], "nomix": []}[kind]
        return [(direction, k) for direction in directions for k in range(stages - 1)]

    def sample_paths(self, stages: int) -> list[tuple[str, int]]:
        candidates = self.candidates(stages)
        count = min(self.params.extra_paths, len(candidates))
        if count == 0:
            return []
        return [candidates[i] for i in torch.randperm(len(candidates))[:count].tolist()]

    # ------------------------------------------------------------------ loss
    @staticmethod
    def pooled_mse(x: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(F.relu(x).float().mean(dim=(2, 3)), F.relu(target).mean(dim=(2, 3)))

    def kl_to_teacher(self, logits: Tensor, teacher_logits: Tensor) -> Tensor:
        t = self.params.temperature
        log_p = F.log_softmax(logits.float() / t, dim=1)
        log_q = F.log_softmax(teacher_logits / t, dim=1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * t * t

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        if teacher_index >= len(self._trunks):
            raise RuntimeError(f"{self.loss_name}: setup() has not been run for teacher {teacher_index}")
        pairs = self.layer_pairs[teacher_index]
        s = self._features(student, [p.student_path for p in pairs], "student")
        t = [f.detach() for f in self._features(teacher, [p.teacher_path for p in pairs], "teacher")]
        teacher_logits = teacher.logits.detach().float()
        student_trunk, teacher_trunk = self._trunks[teacher_index]
        if not self._checked[teacher_index]:
            check_chain(teacher_trunk, t, teacher_logits)
            check_chain(student_trunk, [f.detach() for f in s], student.logits.detach())
            self._checked[teacher_index] = True
        bridges = self.per_teacher[teacher_index]
        last = len(pairs) - 1

        bridged = [bridges.to_teacher[k](s[k]) for k in range(len(pairs))]
        l2 = [F.mse_loss(x.float(), target) for x, target in zip(bridged, t)]
        l2.append(self.pooled_mse(bridged[last], t[last]))
        kl = []
        for direction, k in self.sample_paths(len(pairs)):
            if direction == "s2t":
                x = bridged[k]
                for j in range(k + 1, len(pairs)):
                    x = teacher_trunk.stage(j, x)
                    l2.append(F.mse_loss(x.float(), t[j]))
                l2.append(self.pooled_mse(x, t[last]))
                logits = teacher_trunk.head(x)
            else:
                x = bridges.to_student[k](t[k])
                for j in range(k + 1, len(pairs)):
                    x = student_trunk.stage(j, x)
                logits = student_trunk.head(x)
            kl.append(self.kl_to_teacher(logits, teacher_logits))

        p = self.params
        loss = p.appearance_weight * self.warmup_factor(batch) * torch.stack(l2).sum()
        if kl:
            loss = loss + p.function_weight * torch.stack(kl).sum()
        return loss

    def warmup_factor(self, batch: DistillBatch) -> float:
        warmup = self.params.warmup_epochs
        return 1.0 if warmup == 0 else min((batch.epoch + 1) / warmup, 1.0)
