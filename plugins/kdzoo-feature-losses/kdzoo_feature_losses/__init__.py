"""kdzoo built-in plugin: feature- and relation-based distillation losses (hook module; no torch here).

Params models live here so that listing and validating specs never imports torch; the
implementations are imported from their ``"module:Class"`` factory strings when built.

Every loss taps ``student_layers`` / ``teacher_layers`` (module paths inside the
networks' bodies). Left unset they default to the networks' declared taps, chosen as
the reference implementation behind the published CIFAR-100 numbers taps them
(RepDistiller / mdistiller): the second stage for FitNets' hint, the last stage for
single-map methods, all stages for multi-layer ones, the embedding for relation and
embedding methods (see each loss's ``default_taps``).

Conventions: each loss's default form, reduction and defaults follow the reference code
that produced the published CIFAR-100 numbers (named in its docstring, with the
published weight), so a weight from those tables means the same here. Where the
paper's equation differs from that code, ``convention: paper`` selects the paper's form.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from kdzoo import hookimpl

KDZOO_PLUGIN_API = (1, 4)  # ft, ab, fsp: Loss.stages; simkd: Loss.student_head (1.3); ab, ofd: Network.pre_activation_stages (1.4)

_LAYERS_HELP = (
    "module paths to tap in the {who} (inside its body); unset = the network's declared taps "
    "(second stage, last stage, all stages or embedding, depending on the loss). Lists are paired in order."
)


_CONVENTION_HELP = (
    "'reference': the form and reduction of the reference code behind the published CIFAR-100 "
    "numbers (see the loss's description), so the published weight applies; 'paper': the paper's equation"
)


def _convention_field():
    return Field("reference", description=_CONVENTION_HELP)


Convention = Literal["reference", "paper"]


class _TappedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layers: list[str] | None = Field(None, min_length=1, description=_LAYERS_HELP.format(who="student"))
    teacher_layers: list[str] | None = Field(None, min_length=1, description=_LAYERS_HELP.format(who="teacher"))


class _SingleLayerParams(_TappedParams):
    """For methods defined on one pair of features (embeddings, memory banks)."""

    @model_validator(mode="after")
    def _one_layer(self):
        for name in ("student_layers", "teacher_layers"):
            layers = getattr(self, name)
            if layers is not None and len(layers) != 1:
                raise ValueError(f"{name} must name exactly one module for this loss, got {len(layers)}")
        return self


class FitNetParams(_TappedParams):
    connector: Literal["conv1x1", "conv3x3", "auto"] = Field(
        "conv1x1", description="regressor from the student hint to the teacher hint ('auto': identity when shapes match)"
    )
    relu: bool = Field(
        True, description="ReLU after the regressor (conv + BN + ReLU, as RepDistiller's / mdistiller's ConvReg)"
    )


class ATParams(_TappedParams):
    p: float = Field(2.0, gt=0, le=8, description="power applied to |activation| before averaging over channels")
    convention: Convention = _convention_field()


class SPParams(_TappedParams):
    pass


class CCParams(_SingleLayerParams):
    gamma: float = Field(0.4, gt=0, description="Gaussian RBF kernel width: k(x, y) = exp(-gamma * ||x - y||^2)")
    order: int = Field(2, ge=0, le=20, description="order P of the Taylor expansion of the RBF kernel")
    embed: Literal["linear", "mlp", "none"] = Field(
        "linear", description="student embedding head onto the teacher's embedding width ('none': compare raw embeddings)"
    )
    convention: Convention = _convention_field()


class RKDParams(_SingleLayerParams):
    distance_weight: float = Field(25.0, ge=0, description="weight of the distance-wise term")
    angle_weight: float = Field(50.0, ge=0, description="weight of the angle-wise term")


class PKTParams(_SingleLayerParams):
    convention: Convention = _convention_field()


class VIDParams(_TappedParams):
    init_variance: float = Field(5.0, gt=0, description="initial per-channel variance of the Gaussian")
    min_variance: float = Field(1e-5, gt=0, description="variance floor added to softplus(alpha)")
    convention: Convention = _convention_field()


class NSTParams(_TappedParams):
    pass


class FTParams(_TappedParams):
    paraphrase_rate: float = Field(0.5, gt=0, le=4, description="factor channels = int(rate * teacher channels), RepDistiller's k")
    reconstruction_weight: float = Field(
        1.0, ge=0,
        description="in a run without stages, the weight of the paraphraser's reconstruction loss, trained jointly; "
        "with the stages paraphraser and transfer it is unused (the paraphraser trains alone, then stays frozen)",
    )
    convention: Convention = _convention_field()


class ABParams(_TappedParams):
    margin: float = Field(1.0, gt=0, description="hinge margin mu around the activation boundary")
    convention: Convention = _convention_field()


class FSPParams(_TappedParams):
    connector: Literal["auto", "conv1x1"] = Field(
        "auto", description="student-side channel adapter ('auto': none when channel counts already match)"
    )
    convention: Convention = _convention_field()


class CRDParams(_SingleLayerParams):
    embed_dim: int = Field(128, ge=2, le=4096, description="width of the L2-normalised embedding heads")
    nce_k: int = Field(16384, ge=1, description="negatives per anchor (clipped to num_samples - 1)")
    temperature: float = Field(0.07, gt=0, description="NCE temperature")
    momentum: float = Field(0.5, ge=0, lt=1, description="memory-bank momentum: m <- m * momentum + v * (1 - momentum)")


class ReviewKDParams(_TappedParams):
    levels: Literal["stages_and_embedding", "stages"] = Field(
        "stages_and_embedding",
        description="'stages_and_embedding': the stage maps plus the network's pooled embedding as a 1x1 map, "
        "the deepest level (mdistiller / the authors' code); 'stages': the stage maps only",
    )
    mid_channels: int | None = Field(
        None,
        ge=1,
        le=2048,
        description="width of the attention-based fusion (ABF) path; unset = min(512, channels of the "
        "deepest student level), as the reference",
    )
    pool_sizes: list[PositiveInt] = Field(
        [4, 2, 1], description="HCL pyramid levels (pooled to s x s, weights halving per level)"
    )
    warmup_epochs: int = Field(
        20,
        ge=0,
        description="Linear warm-up: the loss is multiplied by min(epoch/warmup, 1), epochs counted from 1; "
        "0 disables.",
    )


class OFDParams(_TappedParams):
    layer_weights: Literal["halving", "equal"] = Field(
        "halving",
        description="'halving': layer i of n weighted 1/2^(n-i-1), the deepest 1, summed (mdistiller / "
        "the authors' code); 'equal': an unweighted sum over layers",
    )


class SimKDParams(_TappedParams):
    projector_factor: int = Field(2, ge=1, le=16, description="bottleneck reduction of the projector (teacher channels / factor)")
    head: Literal["teacher", "student"] = Field(
        "teacher",
        description="'teacher': the student predicts through the projector and the teacher's reused classifier (the "
        "paper, the authors' code), saved in its checkpoint; needs one teacher with a cam head and one layer pair. "
        "'student': the feature alignment alone, the student keeps its own head (pair it with a label loss)",
    )


class ICKDParams(_TappedParams):
    connector: Literal["auto", "conv1x1"] = Field(
        "conv1x1",
        description="student-side channel adapter: 1x1 conv + BN always, as the authors' code "
        "('auto': none when channel counts already match)",
    )
    convention: Convention = _convention_field()


class KDSVDParams(_TappedParams):
    num_vectors: int = Field(1, ge=1, le=16, description="teacher singular vectors kept per layer (K)")
    extra_student_vectors: int = Field(
        3, ge=0, le=16, description="extra student singular vectors searched when aligning to the teacher's"
    )
    rbf_scale: float = Field(8.0, gt=0, description="radial basis scale: exp(-(a - b)^2 / scale)")
    connector: Literal["auto", "conv1x1"] = Field(
        "auto", description="student-side channel adapter ('auto': none when channel counts already match)"
    )


class MGDParams(_TappedParams):
    mask_ratio: float = Field(
        0.15, ge=0, lt=1, description="share of the aligned student feature masked at random each step (lambda_mgd)"
    )
    mask: Literal["channel", "spatial"] = Field(
        "channel",
        description="'channel': whole channels masked (the authors' classification code); 'spatial': pixels masked "
        "across all channels (their detection / segmentation code)",
    )


class CWDParams(_TappedParams):
    temperature: float = Field(1.0, gt=0, description="softmax temperature tau of each channel's spatial distribution")


class SRDParams(_SingleLayerParams):
    exponent: float = Field(4.0, gt=0, description="power alpha of |normalised difference| inside log(sum ...)")
    bn_eps: float = Field(1e-4, gt=0, description="epsilon of the parameter-free batch normalisation of both embeddings")


class PEFDParams(_SingleLayerParams):
    num_projectors: int = Field(3, ge=1, le=16, description="linear + ReLU projectors whose outputs are averaged")


class FCFDParams(_TappedParams):
    path_type: Literal["bi", "s2t", "t2s", "nomix"] = Field(
        "bi",
        description="mixed paths to sample from: 's2t' student stages then the teacher's, 't2s' the reverse, "
        "'bi' both, 'nomix' none (appearance terms only); the reference's --extra_type",
    )
    extra_paths: int = Field(
        2, ge=0, le=64, description="mixed paths sampled (without replacement) each step; the reference's --extra_paths"
    )
    temperature: float = Field(4.0, gt=0, description="temperature T of the mixed paths' KL to the teacher, T^2-scaled")
    appearance_weight: float = Field(
        5.0,
        ge=0,
        description="weight of the L2 terms (bridged features and teacher-stage outputs of mixed paths vs the "
        "teacher's features); the reference's weight_l2 (0.02 for resnet56 -> resnet20)",
    )
    function_weight: float = Field(
        1.0, ge=0, description="weight of each mixed path's KL to the teacher (the reference's loss_mixture weight)"
    )
    warmup_epochs: int = Field(
        20,
        ge=0,
        description="the L2 terms are multiplied by min(epoch/warmup, 1), epochs counted from 1; 0 disables "
        "(the KL terms are not warmed up)",
    )
    bridge_activation: Literal["leaky_relu", "none"] = Field(
        "leaky_relu",
        description="'leaky_relu': LeakyReLU(0.1) after each bridge's BN, as the reference for networks whose "
        "stages take post-ReLU inputs (its ResNets); 'none': conv + BN only",
    )


# name -> (module:Class, params model, description)
LOSSES: dict[str, tuple[str, type[BaseModel], str]] = {
    "fitnet": ("hint:FitNetLoss", FitNetParams, "FitNets hint: MSE between regressed student and teacher features (Romero et al. 2015)"),
    "at": ("attention:AttentionTransferLoss", ATParams, "Attention transfer on normalised spatial attention maps (Zagoruyko & Komodakis 2017)"),
    "sp": ("relation:SimilarityPreservingLoss", SPParams, "Similarity-preserving batch Gram matrices (Tung & Mori 2019)"),
    "cc": ("relation:CorrelationCongruenceLoss", CCParams, "Correlation congruence with a Taylor-expanded RBF kernel (Peng et al. 2019)"),
    "rkd": ("relation:RelationalLoss", RKDParams, "Relational KD: distance- and angle-wise relations (Park et al. 2019)"),
    "pkt": ("relation:ProbabilisticTransferLoss", PKTParams, "Probabilistic knowledge transfer of cosine-kernel distributions (Passalis & Tefas 2018)"),
    "vid": ("information:VariationalInformationLoss", VIDParams, "Variational information distillation, Gaussian NLL (Ahn et al. 2019)"),
    "nst": ("attention:NeuronSelectivityLoss", NSTParams, "Neuron selectivity transfer, polynomial-kernel MMD (Huang & Wang 2017)"),
    "ft": ("factor:FactorTransferLoss", FTParams, "Factor transfer via paraphraser and translator (Kim et al. 2018)"),
    "ab": ("boundary:ActivationBoundaryLoss", ABParams, "Activation boundary transfer, margin hinge (Heo et al. 2019)"),
    "fsp": ("gram:FSPLoss", FSPParams, "Flow of solution procedure matrices between stages (Yim et al. 2017)"),
    "crd": ("information:ContrastiveRepresentationLoss", CRDParams, "Contrastive representation distillation with memory banks (Tian et al. 2020)"),
    "reviewkd": ("review:ReviewKDLoss", ReviewKDParams, "Knowledge review: ABF fusion + hierarchical context loss (Chen et al. 2021)"),
    "ofd": ("boundary:OverhaulLoss", OFDParams, "Overhaul of feature distillation: margin ReLU + partial L2 (Heo et al. 2019)"),
    "simkd": ("hint:SimKDLoss", SimKDParams, "SimKD projector feature alignment (Chen et al. 2022)"),
    "ickd": ("gram:InterChannelCorrelationLoss", ICKDParams, "Inter-channel correlation matrices (Liu et al. 2021)"),
    "kdsvd": ("gram:SVDLoss", KDSVDParams, "Self-supervised KD with SVD: RBF relations of singular vectors (Lee et al. 2018)"),
    "mgd": ("generative:MaskedGenerativeLoss", MGDParams, "Masked generative distillation: regenerate the teacher map from a masked student map (Yang et al. 2022)"),
    "cwd": ("channel:ChannelWiseLoss", CWDParams, "Channel-wise distillation: KL of each channel's spatial softmax (Shu et al. 2021)"),
    "srd": ("projector:ProjectorDistillationLoss", SRDParams, "Projector + batch-norm + log-sum distance on embeddings (Miles & Mikolajczyk 2024)"),
    "pefd": ("projector:ProjectorEnsembleLoss", PEFDParams, "Projector-ensemble feature distillation, cosine distance (Chen et al. 2022)"),
    "fcfd": ("fcfd:FunctionConsistentLoss", FCFDParams, "Function-consistent feature distillation: bridged features through the other network's later stages (Liu et al. 2023)"),
}


@hookimpl
def register_losses(register):
    for name, (target, params, description) in LOSSES.items():
        register(name, f"{__name__}.{target}", params=params, description=description)
