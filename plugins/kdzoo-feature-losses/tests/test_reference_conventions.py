"""Each loss's default convention against the reference code behind the published CIFAR-100
numbers (RepDistiller, mdistiller, the authors' code), written out here in plain torch
from those files' formulas, including the factors kdzoo used to get wrong; and the
``paper`` convention where the paper's equation differs.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def relu_maps(*shape, seed=0):
    return torch.relu(randn(*shape, seed=seed))  # post-ReLU stage outputs, as the references tap


def rep_pool(f_s, f_t):
    """RepDistiller's size match: the larger map adaptive-average-pooled to the smaller H."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


# --------------------------------------------------------------------------- AT
def rep_at_layer(f_s, f_t, p=2):
    """RepDistiller distiller_zoo/AT.py: pool the features, then (at_s - at_t)^2 averaged."""
    f_s, f_t = rep_pool(f_s, f_t)

    def at(f):
        return F.normalize(f.pow(p).mean(1).view(f.size(0), -1))

    return (at(f_s) - at(f_t)).pow(2).mean()


def test_at_is_the_mean_over_positions_and_1_64_of_the_old_sum_on_8x8(harness):
    s, t = relu_maps(4, 8, 8, 8, seed=1), relu_maps(4, 6, 8, 8, seed=2)
    run = harness.on_features("at", {"s": s}, [{"t": t}])
    reference = rep_at_layer(s, t)
    assert_close(run(), reference)
    q_s = F.normalize(s.pow(2).mean(1).flatten(1), dim=1)
    q_t = F.normalize(t.pow(2).mean(1).flatten(1), dim=1)
    old_sum_form = (q_s - q_t).pow(2).sum(dim=1).mean()
    assert_close(run(), old_sum_form / 64)


def test_at_sums_layers_and_pools_features_not_maps(harness):
    student = {"s1": relu_maps(4, 8, 8, 8, seed=1), "s2": relu_maps(4, 16, 4, 4, seed=2)}
    teacher = {"t1": relu_maps(4, 6, 4, 4, seed=3), "t2": relu_maps(4, 12, 4, 4, seed=4)}
    run = harness.on_features("at", student, [teacher])
    expected = rep_at_layer(student["s1"], teacher["t1"]) + rep_at_layer(student["s2"], teacher["t2"])
    assert_close(run(), expected)
    # pooling the attention map instead of the features gives another number
    a_s = F.adaptive_avg_pool2d(student["s1"].pow(2).mean(1, keepdim=True), 4)
    q_s, q_t = F.normalize(a_s.flatten(1), dim=1), F.normalize(teacher["t1"].pow(2).mean(1).flatten(1), dim=1)
    map_pooled = (q_s - q_t).pow(2).mean() + rep_at_layer(student["s2"], teacher["t2"])
    assert abs(run().item() - map_pooled.item()) > 1e-4 * expected.item()


def test_at_paper_convention_is_half_the_unsquared_distance(harness):
    s, t = relu_maps(4, 8, 4, 4, seed=1), relu_maps(4, 6, 4, 4, seed=2)
    run = harness.on_features("at", {"s": s}, [{"t": t}], params={"convention": "paper"})
    q_s = F.normalize(s.pow(2).mean(1).flatten(1), dim=1)
    q_t = F.normalize(t.pow(2).mean(1).flatten(1), dim=1)
    assert_close(run(), 0.5 * (q_s - q_t).norm(dim=1).mean())


# --------------------------------------------------------------------------- NST
def rep_nst_layer(f_s, f_t):
    """RepDistiller distiller_zoo/NST.py (full_loss)."""
    f_s, f_t = rep_pool(f_s, f_t)
    f_s = F.normalize(f_s.view(f_s.shape[0], f_s.shape[1], -1), dim=2)
    f_t = F.normalize(f_t.view(f_t.shape[0], f_t.shape[1], -1), dim=2)

    def poly(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    return poly(f_t, f_t).mean() + poly(f_s, f_s).mean() - 2 * poly(f_s, f_t).mean()


def test_nst_taps_all_stages_and_sums_them(harness):
    student = {"s1": relu_maps(4, 8, 4, 4, seed=1), "s2": relu_maps(4, 16, 2, 2, seed=2)}
    teacher = {"t1": relu_maps(4, 6, 4, 4, seed=3), "t2": relu_maps(4, 12, 2, 2, seed=4)}
    run = harness.on_features("nst", student, [teacher])
    assert [(p.student_path, p.teacher_path) for p in run.loss.layer_pairs[0]] == [("s1", "t1"), ("s2", "t2")]
    expected = rep_nst_layer(student["s1"], teacher["t1"]) + rep_nst_layer(student["s2"], teacher["t2"])
    assert_close(run(), expected)


# --------------------------------------------------------------------------- VID
def vid_reference(regressor, f_s, f_t, per_sample_sum=False):
    """RepDistiller distiller_zoo/VID.py with the regressor's weights (bias-free 1x1 convs)."""
    f_s, f_t = rep_pool(f_s, f_t)
    convs = [m.weight.detach() for m in regressor.mean if isinstance(m, nn.Conv2d)]
    h = f_s
    for i, weight in enumerate(convs):
        h = F.conv2d(h, weight)
        h = torch.relu(h) if i < len(convs) - 1 else h
    variance = (torch.log(1.0 + torch.exp(regressor.alpha.detach())) + 1e-5).view(1, -1, 1, 1)
    nll = 0.5 * ((h - f_t) ** 2 / variance + torch.log(variance))
    return nll.flatten(1).sum(1).mean() if per_sample_sum else nll.mean()


@pytest.mark.parametrize("convention", ["reference", "paper"])
def test_vid_sums_pooled_layers(harness, convention):
    student = {"s1": relu_maps(4, 8, 4, 4, seed=1), "s2": relu_maps(4, 16, 4, 4, seed=2)}
    teacher = {"t1": relu_maps(4, 6, 2, 2, seed=3), "t2": relu_maps(4, 12, 4, 4, seed=4)}
    run = harness.on_features("vid", student, [teacher], params={"convention": convention})
    first, second = run.modules()
    with torch.no_grad():
        first.alpha.copy_(randn(6, seed=5))
    assert all(m.bias is None for m in first.mean if isinstance(m, nn.Conv2d))
    paper = convention == "paper"
    expected = vid_reference(first, student["s1"], teacher["t1"], paper) + vid_reference(second, student["s2"], teacher["t2"], paper)
    assert_close(run(), expected)


# --------------------------------------------------------------------------- FitNet
def test_fitnet_hints_at_the_second_stage_through_conv_bn_relu(harness, known):
    student = {f"s{i}": randn(4, 8, 4, 4, seed=i) for i in (1, 2, 3)}
    teacher = {f"t{i}": randn(4, 8, 4, 4, seed=10 + i) for i in (1, 2, 3)}
    run = harness.on_features("fitnet", student, [teacher])
    assert [(p.student_path, p.teacher_path) for p in run.loss.layer_pairs[0]] == [("s2", "t2")]
    regressor = run.modules()[0]
    assert isinstance(regressor[-1], nn.ReLU)
    known.identity_conv(regressor[0])
    assert_close(run(), F.mse_loss(torch.relu(student["s2"]), teacher["t2"]))
    plain = harness.on_features("fitnet", student, [teacher], params={"relu": False})
    known.identity_conv(plain.modules()[0])
    assert_close(plain(), F.mse_loss(student["s2"], teacher["t2"]))


# --------------------------------------------------------------------------- PKT
def rep_pkt(output_net, target_net, eps=1e-7):
    """RepDistiller distiller_zoo/PKT.py: whole matrix, row-normalised, KL averaged over B^2."""
    output_net = output_net / (output_net.norm(dim=1, keepdim=True) + eps)
    target_net = target_net / (target_net.norm(dim=1, keepdim=True) + eps)
    model = (output_net @ output_net.t() + 1.0) / 2.0
    target = (target_net @ target_net.t() + 1.0) / 2.0
    model = model / model.sum(dim=1, keepdim=True)
    target = target / target.sum(dim=1, keepdim=True)
    return torch.mean(target * torch.log((target + eps) / (model + eps)))


def test_pkt_keeps_the_diagonal_and_averages_over_all_pairs(harness):
    s, t = randn(6, 16, seed=1), randn(6, 12, seed=2)
    run = harness.on_features("pkt", {"e": s}, [{"e": t}])
    assert_close(run(), rep_pkt(s, t))
    paper = harness.on_features("pkt", {"e": s}, [{"e": t}], params={"convention": "paper"})
    assert abs(paper().item() - run().item()) > 1e-3 * run().item()  # the old convention was another number


# --------------------------------------------------------------------------- CC
def taylor_kernel(e, gamma=0.4, order=2):
    u = F.normalize(e, dim=1)
    cos = u @ u.t()
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cos**p for p in range(order + 1))


def test_cc_uses_the_unsquared_distance_like_torchdistill(harness):
    s, t = randn(6, 12, seed=1), randn(6, 12, seed=2)
    run = harness.on_features("cc", {"e": s}, [{"e": t}], params={"embed": "none"})
    difference = taylor_kernel(s) - taylor_kernel(t)
    assert_close(run(), torch.dist(taylor_kernel(s), taylor_kernel(t), 2) / 36)  # torchdistill CCKDLoss, batchmean
    paper = harness.on_features("cc", {"e": s}, [{"e": t}], params={"embed": "none", "convention": "paper"})
    assert_close(paper(), difference.pow(2).sum() / 36)


# --------------------------------------------------------------------------- AB
def rep_ab_layer(source, target, margin=1.0):
    """RepDistiller distiller_zoo/AB.py: criterion_alternative_l2."""
    loss = (source + margin) ** 2 * ((source > -margin) & (target <= 0)).float() + (source - margin) ** 2 * (
        (source <= margin) & (target > 0)
    ).float()
    return loss.abs().sum()


def test_ab_weights_layers_and_scales_by_3_over_1000(harness, known):
    student = {f"s{i}": randn(4, 6, 4, 4, seed=i) for i in (1, 2, 3)}
    teacher = {f"t{i}": randn(4, 6, 4, 4, seed=10 + i) for i in (1, 2, 3)}
    for params in ({}, {"convention": "paper"}):
        run = harness.on_features("ab", student, [teacher], params=params)
        for connector in run.modules():
            known.identity_conv(connector)
        layers = [rep_ab_layer(student[f"s{i}"], teacher[f"t{i}"]) / 4 for i in (1, 2, 3)]
        if params:
            expected = sum(layers)
        else:
            weights = [2 ** (i - 3 + 1) for i in range(3)]  # ABLoss.w: 1/4, 1/2, 1
            expected = sum(w * loss / 1000 * 3 for w, loss in zip(weights, layers))
        assert_close(run(), expected)


# --------------------------------------------------------------------------- FSP
def rep_fsp(g):
    """RepDistiller distiller_zoo/FSP.py compute_fsp."""
    out = []
    for i in range(len(g) - 1):
        bot, top = rep_pool(g[i], g[i + 1])
        bot = bot.unsqueeze(1).flatten(3)
        top = top.unsqueeze(2).flatten(3)
        out.append((bot * top).mean(-1))
    return out


def test_fsp_sums_the_pairs(harness):
    student = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 8, 2, 2, seed=2), "s3": randn(4, 8, 2, 2, seed=3)}
    teacher = {"t1": randn(4, 8, 4, 4, seed=4), "t2": randn(4, 8, 2, 2, seed=5), "t3": randn(4, 8, 2, 2, seed=6)}
    s_fsp, t_fsp = rep_fsp(list(student.values())), rep_fsp(list(teacher.values()))
    run = harness.on_features("fsp", student, [teacher])
    assert_close(run(), sum((s - t).pow(2).mean() for s, t in zip(s_fsp, t_fsp)))
    paper = harness.on_features("fsp", student, [teacher], params={"convention": "paper"})
    assert_close(paper(), sum((s - t).pow(2).flatten(1).sum(1).mean() for s, t in zip(s_fsp, t_fsp)))


# --------------------------------------------------------------------------- OFD
def mdistiller_ofd_layer(source, target, margin):
    """mdistiller OFD.py feat_loss."""
    loss = (
        (source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
        + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).float()
        + (source - target) ** 2 * (target > 0).float()
    )
    return loss.abs().mean(dim=0).sum()


@pytest.mark.parametrize("layer_weights", ["halving", "equal"])
def test_ofd_halves_the_weight_of_each_shallower_layer(harness, known, layer_weights):
    student = {f"s{i}": randn(4, 6, 4, 4, seed=i) for i in (1, 2, 3)}
    teacher = {f"t{i}": randn(4, 6, 4, 4, seed=10 + i) for i in (1, 2, 3)}
    run = harness.on_features("ofd", student, [teacher], params={"layer_weights": layer_weights})
    for module in run.modules():
        known.identity_conv(module.connector)  # margins are 0: no producing BatchNorm here
    layers = [mdistiller_ofd_layer(student[f"s{i}"], teacher[f"t{i}"], torch.zeros(1, 6, 1, 1)) for i in (1, 2, 3)]
    weights = [1 / 2 ** (3 - i - 1) for i in range(3)] if layer_weights == "halving" else [1, 1, 1]
    assert_close(run(), sum(w * loss for w, loss in zip(weights, layers)))


# --------------------------------------------------------------------------- ICKD
def ickd_reference(f_s, f_t):
    """ICKD-C Cifar100/distiller_zoo/ICKD.py batch_loss after the embedding."""
    bsz, ch = f_s.shape[0], f_s.shape[1]
    f_s, f_t = f_s.view(bsz, ch, -1), f_t.view(bsz, ch, -1)
    emd_s = F.normalize(torch.bmm(f_s, f_s.permute(0, 2, 1)), dim=2)
    emd_t = F.normalize(torch.bmm(f_t, f_t.permute(0, 2, 1)), dim=2)
    return (emd_s - emd_t).pow(2).view(bsz, -1).sum() / (ch * bsz)


def test_ickd_divides_by_batch_times_channels_after_an_embedding(harness, known):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 8, 2, 2, seed=2)
    run = harness.on_features("ickd", {"s": s}, [{"t": t}])
    embed = run.modules()[0]
    assert isinstance(embed.conv, nn.Conv2d)  # the authors' Embed is there even for equal widths
    known.identity_conv(embed)
    assert_close(run(), ickd_reference(s, t))
    paper = harness.on_features("ickd", {"s": s}, [{"t": t}], params={"convention": "paper"})
    known.identity_conv(paper.modules()[0])
    assert_close(paper(), ickd_reference(s, t) / 8)  # divided by c once more


# --------------------------------------------------------------------------- CRD, ReviewKD
def test_crd_defaults_to_the_published_negatives(harness):
    run = harness.on_features("crd", {"e": randn(4, 16, seed=1)}, [{"e": randn(4, 12, seed=2)}], num_samples=20000)
    assert run.loss.params.nce_k == 16384
    assert run.loss.contrast_indices(torch.arange(4), 20000).shape == (4, 16385)


def test_reviewkd_warms_up_over_20_epochs_counted_from_1(harness):
    student = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 16, 2, 2, seed=2), "e": randn(4, 16, seed=5)}
    teacher = {"t1": randn(4, 6, 4, 4, seed=3), "t2": randn(4, 12, 2, 2, seed=4), "e": randn(4, 12, seed=6)}
    run = harness.on_features("reviewkd", student, [teacher])
    full = harness.on_features("reviewkd", student, [teacher], params={"warmup_epochs": 0})
    full.loss.load_state_dict(run.loss.state_dict())
    run.loss.eval()
    full.loss.eval()
    unwarmed = full()
    for epoch, factor in ((0, 1 / 20), (4, 5 / 20), (19, 1.0), (30, 1.0)):
        assert_close(run.loss(dataclasses.replace(run.batch(), epoch=epoch)), factor * unwarmed)
