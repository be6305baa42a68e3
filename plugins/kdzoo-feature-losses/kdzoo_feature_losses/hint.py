"""Direct feature regression: FitNets hints, and SimKD's projector alignment with its prediction through the teacher's classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import KdzooError, SetupContext, StudentHead
from kdzoo.api.connectors import as_feature_map, feature_map_shape, make_connector
from kdzoo_feature_losses import FitNetParams, SimKDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss, describe_shape
from kdzoo_feature_losses._math import pool_to_common_size


class FitNetLoss(LayerwiseLoss):
    """FitNets hint loss: ``MSE(r(student hint), teacher hint)``.

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), "FitNets: Hints for Thin
    Deep Nets", ICLR 2015, arXiv:1412.6550.

    Follows RepDistiller ``distiller_zoo/FitNet.py`` + ``models/util.py:ConvReg`` (and
    mdistiller ``FitNet.py`` + ``_common.py:ConvReg``): the regressor ``r`` is conv + BN
    + ReLU (``relu``), the loss the element-mean MSE, and the hint is the **second**
    stage (their ``hint_layer = 2`` counts the stem as layer 0: the middle stage of a
    3-stage CIFAR ResNet). Published weight: 100 (RepDistiller ``-b 100``, mdistiller
    ``FITNET.LOSS.FEAT_WEIGHT``).

    Here the conv is 1x1 (default) or 3x3 followed by a bilinear resize to the teacher's
    spatial size where the references pick a strided / transposed / valid conv by the
    size ratio (the same 1x1 conv when sizes match, the usual CIFAR case). ``(B, D)``
    embeddings use a linear regressor (+ ReLU, like RepDistiller's ``Regress``). Token
    maps are laid out on their grid. With ``connector: auto`` and matching shapes there
    is no regressor and no ReLU.

    Simplifications: the paper's ``1/2 ||u_h - r(v_g)||^2`` is the element mean here (a
    constant factor, as in both references), and the paper's two-stage schedule (hint
    pre-training, then KD) is replaced by adding this term to the objective, as the
    references do. Several layer pairs (explicit lists) are averaged.
    """

    loss_name = "fitnet"
    params_model = FitNetParams
    default_taps = "second_stage"
    feature_kind = "any"  # maps, tokens (as maps) or embeddings

    def _converted_shape(self, shapes: dict[str, torch.Size], path: str, role: str) -> torch.Size:
        shape = super()._converted_shape(shapes, path, role)
        if len(shape) == 2:
            return shape
        try:
            return feature_map_shape(shape)
        except ValueError as exc:
            raise ValueError(f"fitnet: {role} layer '{path}' with shape {describe_shape(shape)} is unusable: {exc}") from None

    def _convert(self, x: Tensor) -> Tensor:
        return (x if x.ndim == 2 else as_feature_map(x)).float()

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        vectors = (len(pair.student_shape) == 2, len(pair.teacher_shape) == 2)
        if vectors[0] != vectors[1]:
            raise ValueError(
                f"fitnet: cannot regress student layer '{pair.student_path}' {describe_shape(pair.student_shape)} "
                f"onto teacher layer '{pair.teacher_path}' {describe_shape(pair.teacher_shape)}: one is a map, one a vector"
            )
        kind = self.params.connector
        if vectors[0] and kind != "auto":
            kind = "linear"
        regressor = make_connector(kind, pair.student_shape, pair.teacher_shape)
        if self.params.relu and not isinstance(regressor, nn.Identity):
            regressor = nn.Sequential(regressor, nn.ReLU())
        return regressor

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        return F.mse_loss(module(student).float(), teacher)


class SimKDProjector(nn.Module):
    """SimKD's projector: 1x1 conv -> 3x3 conv -> 1x1 conv (BN + ReLU after each), with a
    ``teacher_channels / factor`` bottleneck."""

    def __init__(self, student_channels: int, teacher_channels: int, factor: int):
        super().__init__()
        hidden = max(1, teacher_channels // factor)
        self.layers = nn.Sequential(
            nn.Conv2d(student_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, teacher_channels, 1, bias=False),
            nn.BatchNorm2d(teacher_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class TeacherClassifier(nn.Module):
    """A frozen copy of the teacher's linear classifier: its weight and bias as buffers, saved
    with the loss (and in the student's checkpoint) and never trained."""

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class SimKDPrediction(nn.Module):
    """SimKD's prediction, as the authors' ``models/util.py:SimKD.forward``: the student map,
    average-pooled to the teacher's spatial size when it is larger, through the projector,
    global average pooling, then the teacher's classifier."""

    def __init__(self, projector: nn.Module, classifier: nn.Module, teacher_size: tuple[int, int]):
        super().__init__()
        self.projector = projector
        self.classifier = classifier
        self.teacher_size = tuple(teacher_size)

    def forward(self, feature: Tensor) -> Tensor:
        x = as_feature_map(feature)
        if x.shape[-2] > self.teacher_size[0]:
            x = F.adaptive_avg_pool2d(x, self.teacher_size)
        return self.classifier(self.projector(x).mean(dim=(2, 3)))


class SimKDLoss(LayerwiseLoss):
    """SimKD: ``MSE(P(student feature), teacher feature)``, and the student predicts through
    ``P`` and the teacher's classifier.

    Chen, Mei, Zhang, Wang, Feng & Chen (2022), "Knowledge Distillation with the Reused
    Teacher Classifier", CVPR 2022, arXiv:2203.14001.

    ``P`` is the paper's projector (1x1, 3x3, 1x1 convs with BN + ReLU, bottleneck
    ``teacher_channels / projector_factor``). When the spatial sizes differ, the larger
    map is average-pooled to the smaller one first, as in the authors' code.

    ``head: teacher`` (default) follows the authors' code, DefangChen/SimKD
    (``train_student.py --distill simkd``, ``models/util.py:SimKD``, ``helper/loops.py``):
    the student's logits are ``teacher_classifier(avgpool(P(student feature)))``, the
    teacher's classifier reused frozen (a copy of the linear head of the teacher's cam,
    which must read the tapped teacher layer's channels), in evaluation and in the
    student's checkpoint (``Loss.student_head``: ``kdzoo.load_model`` and ``kdzoo export``
    give that model). Published setting: this loss alone at weight 1 (``-c 0 -d 0 -b 1``,
    f = 2); the student's own classifier is then never trained nor used. One teacher and
    one layer pair (the last stage by default, the authors' ``feat[-2]``). Other terms of
    the spec (CE, KD) read the student's own logits, where the authors' ``-c``/``-d`` terms
    read the head's: their published setting has neither.
    ``head: student``: the feature alignment alone; the student keeps its own head, so
    pair it with a label loss for it.
    """

    loss_name = "simkd"
    params_model = SimKDParams
    default_taps = "last_stage"
    feature_kind = "map"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return SimKDProjector(pair.student_shape[1], pair.teacher_shape[1], self.params.projector_factor)

    def setup(self, context: SetupContext) -> None:
        super().setup(context)
        self.head_problem = None  # why the student cannot predict through the teacher's classifier (asked by student_head)
        if self.params.head != "teacher":
            return
        if len(context.teachers) != 1 or len(self.layer_pairs[0]) != 1:
            self.head_problem = (
                f"simkd with head: teacher reuses one teacher's classifier on one projected feature; this run has "
                f"{len(context.teachers)} teacher(s) and {len(self.layer_pairs[0])} layer pair(s): give it one of each, "
                "or set head: student"
            )
            return
        pair, teacher = self.layer_pairs[0][0], context.teachers[0]
        classifier = teacher.submodule(teacher.cam.classifier) if teacher.cam is not None else None
        channels = pair.teacher_shape[1]
        if not isinstance(classifier, nn.Linear) or classifier.in_features != channels:
            found = "declares no cam head" if classifier is None else f"has the cam classifier {classifier!r}"
            self.head_problem = (
                f"simkd with head: teacher reuses the teacher's linear classifier on the pooled teacher layer "
                f"'{pair.teacher_path}' ({channels} channels); the teacher {found}. Tap the layer its classifier pools, "
                "or set head: student"
            )
            return
        bias = classifier.bias if classifier.bias is not None else torch.zeros(classifier.out_features)
        self.teacher_classifier = TeacherClassifier(classifier.weight.detach().float().clone(), bias.detach().float().clone())
        self.head_config = {
            "student_channels": int(pair.student_shape[1]), "teacher_channels": int(channels),
            "num_classes": int(classifier.out_features), "teacher_size": [int(d) for d in pair.teacher_shape[-2:]],
        }

    def student_head(self) -> StudentHead | None:
        if self.params.head != "teacher":
            return None
        if self.head_problem is not None:
            raise KdzooError(f"losses: {self.head_problem}")
        pair = self.layer_pairs[0][0]
        prediction = SimKDPrediction(self.per_teacher[0][0], self.teacher_classifier, tuple(self.head_config["teacher_size"]))
        return StudentHead(tap=pair.student_path, module=prediction, config=dict(self.head_config))

    def build_student_head(self, config: dict) -> nn.Module:
        classes, channels = config["num_classes"], config["teacher_channels"]
        projector = SimKDProjector(config["student_channels"], channels, self.params.projector_factor)
        classifier = TeacherClassifier(torch.zeros(classes, channels), torch.zeros(classes))
        return SimKDPrediction(projector, classifier, tuple(config["teacher_size"]))

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        student, teacher = pool_to_common_size(student, teacher)
        return F.mse_loss(module(student).float(), teacher)
