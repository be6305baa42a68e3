"""Every loss against its paper's formula, written out here independently of the package's helpers
(CRD, OFD and KD-SVD: test_formulas_crd_ofd_kdsvd.py).

Connectors are given known weights (identity 1x1 convs, copied random weights, eval-mode
BatchNorm with set statistics) so that the expected value can be computed by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

ZERO = torch.tensor(0.0)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def block_mean(x, size):
    """Average-pool (B, C, H, W) to (size, size) by integer blocks, written out."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(dim=(3, 5))


def unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True)


def conv1x1(weight, x):
    return torch.einsum("oc,bchw->bohw", weight, x)


def set_conv_connector(connector, weight, mean, var, gamma, beta):
    """Known weights for a 1x1 ConvConnector in eval mode; returns the function it computes."""
    with torch.no_grad():
        connector.conv.weight.copy_(weight.view(*weight.shape, 1, 1))
        connector.bn.running_mean.copy_(mean)
        connector.bn.running_var.copy_(var)
        connector.bn.weight.copy_(gamma)
        connector.bn.bias.copy_(beta)
    connector.eval()
    eps = connector.bn.eps

    def apply(x):
        y = conv1x1(weight, x)
        view = (1, -1, 1, 1)
        return (y - mean.view(view)) / torch.sqrt(var.view(view) + eps) * gamma.view(view) + beta.view(view)

    return apply


def random_conv_connector(connector, out_channels, in_channels, seed):
    return set_conv_connector(
        connector,
        randn(out_channels, in_channels, seed=seed),
        randn(out_channels, seed=seed + 1),
        randn(out_channels, seed=seed + 2).abs() + 0.5,
        randn(out_channels, seed=seed + 3),
        randn(out_channels, seed=seed + 4),
    )


# --------------------------------------------------------------------------- FitNet
def test_fitnet_is_mse_after_the_regressor(harness, known):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 8, 4, 4, seed=2)
    run = harness.on_features("fitnet", {"s": s}, [{"t": t}])
    known.identity_conv(run.modules()[0][0])  # conv + BN, then the ReLU
    assert_close(run(), ((torch.relu(s) - t) ** 2).mean())
    assert_close(run(teachers=[{"t": torch.relu(s)}]), ZERO)  # identical hints -> 0


def test_fitnet_regressor_projects_and_resizes(harness):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 6, 2, 2, seed=2)
    run = harness.on_features("fitnet", {"s": s}, [{"t": t}])
    regress = random_conv_connector(run.modules()[0][0], 6, 8, seed=10)
    hint = torch.relu(F.interpolate(regress(s), size=(2, 2), mode="bilinear", align_corners=False))
    assert_close(run(), ((hint - t) ** 2).mean())


def test_fitnet_on_embeddings_uses_a_linear_regressor(harness):
    s, t = randn(6, 16, seed=1), randn(6, 12, seed=2)
    run = harness.on_features("fitnet", {"e": s}, [{"e": t}], params={"student_layers": ["e"], "teacher_layers": ["e"]})
    linear, relu = run.modules()[0]
    assert isinstance(linear, nn.Linear) and isinstance(relu, nn.ReLU)
    assert_close(run(), ((torch.relu(s @ linear.weight.t() + linear.bias) - t) ** 2).mean())


# --------------------------------------------------------------------------- AT
def explicit_at(s, t, p=2.0):
    size = min(s.shape[-1], t.shape[-1])
    s, t = block_mean(s, size), block_mean(t, size)  # the features are pooled, then mapped
    a_s, a_t = s.abs().pow(p).mean(dim=1), t.abs().pow(p).mean(dim=1)
    q_s, q_t = unit_rows(a_s.flatten(1)), unit_rows(a_t.flatten(1))
    return ((q_s - q_t) ** 2).mean()  # over batch and positions


def test_at_matches_normalised_attention_maps_summed_over_layers(harness):
    student = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 16, 2, 2, seed=2)}
    teacher = {"t1": randn(4, 6, 2, 2, seed=3), "t2": randn(4, 12, 2, 2, seed=4)}
    run = harness.on_features("at", student, [teacher])  # default: all stages, paired in order
    expected = explicit_at(student["s1"], teacher["t1"]) + explicit_at(student["s2"], teacher["t2"])
    assert_close(run(), expected)
    run3 = harness.on_features("at", student, [teacher], params={"p": 3.0})
    assert_close(run3(), explicit_at(student["s1"], teacher["t1"], 3.0) + explicit_at(student["s2"], teacher["t2"], 3.0))


def test_at_is_zero_for_identical_or_rescaled_features(harness):
    s = randn(4, 8, 4, 4, seed=1)
    run = harness.on_features("at", {"s": s}, [{"t": 3.0 * s}])
    assert_close(run(), ZERO)


# --------------------------------------------------------------------------- SP
def explicit_sp(s, t):
    b = s.shape[0]

    def similarity(x):
        q = x.reshape(b, -1)
        g = q @ q.t()
        return g / g.norm(dim=1, keepdim=True)

    return ((similarity(t) - similarity(s)) ** 2).sum() / b**2


def test_sp_is_frobenius_distance_of_row_normalised_grams(harness):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 6, 2, 2, seed=2)
    run = harness.on_features("sp", {"s": s}, [{"t": t}])
    assert_close(run(), explicit_sp(s, t))
    assert_close(run(teachers=[{"t": s.clone()}]), ZERO)


# --------------------------------------------------------------------------- CC
def exact_rbf(e, gamma):
    u = unit_rows(e)
    return torch.exp(-gamma * ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1))


def taylor_rbf(e, gamma, order):
    u = unit_rows(e)
    cos = u @ u.t()
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cos**p for p in range(order + 1))


def test_cc_correlation_congruence_with_taylor_kernel(harness):
    s, t = randn(6, 16, seed=1), randn(6, 12, seed=2)
    run = harness.on_features("cc", {"e": s}, [{"e": t}])
    head = run.modules()[0]
    embedded = s @ head.weight.t() + head.bias
    n = s.shape[0]
    expected = ((taylor_rbf(t, 0.4, 2) - taylor_rbf(embedded, 0.4, 2)) ** 2).sum().sqrt() / n**2
    assert_close(run(), expected)


def test_cc_high_order_expansion_approaches_the_gaussian_kernel(harness):
    s, t = randn(6, 16, seed=1), randn(6, 16, seed=2)
    run = harness.on_features("cc", {"e": s}, [{"e": t}], params={"order": 12, "embed": "none", "convention": "paper"})
    expected = ((exact_rbf(t, 0.4) - exact_rbf(s, 0.4)) ** 2).mean()
    assert_close(run(), expected, atol=1e-7, rtol=1e-4)
    assert_close(run(teachers=[{"e": s.clone()}]), ZERO)


# --------------------------------------------------------------------------- RKD
def test_rkd_on_three_points_by_hand(harness):
    # teacher: a 3-4-5 right triangle; student: a unit right isosceles triangle
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    run = harness.on_features("rkd", {"e": student}, [{"e": teacher}])
    r2 = math.sqrt(2)
    # distances over the mean off-diagonal distance: teacher 3,4,5 / 4; student 1,1,sqrt2 / ((2+sqrt2)/3)
    student_mean = (2 + r2) / 3
    differences = [1 / student_mean - 3 / 4, 1 / student_mean - 4 / 4, r2 / student_mean - 5 / 4]
    distance = sum(2 * 0.5 * d**2 for d in differences) / 9  # each pair twice, Huber quadratic (|d| < 1), over 3x3
    # cosines at the vertices: teacher 0, 3/5, 4/5; student 0, 1/sqrt2, 1/sqrt2; each appears twice in 3x3x3
    angle = (2 * 0.5 * (1 / r2 - 0.6) ** 2 + 2 * 0.5 * (1 / r2 - 0.8) ** 2) / 27
    assert_close(run(), torch.tensor(25 * distance + 50 * angle))


def huber(x):
    return torch.where(x.abs() < 1, 0.5 * x**2, x.abs() - 0.5)


def explicit_rkd(s, t, distance_weight=25.0, angle_weight=50.0):
    def distances(e):
        d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1).sqrt()
        n = len(e)
        return d / (d.sum() / (n * n - n))

    def cosines(e):
        n = len(e)
        out = torch.zeros(n, n, n)
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j != i and k != i:
                        a, b = e[j] - e[i], e[k] - e[i]
                        out[i, j, k] = a @ b / (a.norm() * b.norm())
        return out

    return distance_weight * huber(distances(s) - distances(t)).mean() + angle_weight * huber(cosines(s) - cosines(t)).mean()


def test_rkd_matches_distance_and_angle_potentials(harness):
    s, t = randn(6, 16, seed=1), randn(6, 12, seed=2) * 3
    run = harness.on_features("rkd", {"e": s}, [{"e": t}])
    assert_close(run(), explicit_rkd(s, t))
    weighted = harness.on_features("rkd", {"e": s}, [{"e": t}], params={"distance_weight": 1.0, "angle_weight": 0.0})
    assert_close(weighted(), explicit_rkd(s, t, 1.0, 0.0))
    assert_close(run(teachers=[{"e": 2.0 * s}]), ZERO)  # scale-free relations


# --------------------------------------------------------------------------- PKT
def explicit_pkt(s, t, eps=1e-7):
    def conditional(e):
        n = len(e)
        u = unit_rows(e)
        kernel = (u @ u.t() + 1) / 2
        p = torch.zeros(n, n)
        for i in range(n):
            others = [k for k in range(n) if k != i]
            total = kernel[i, others].sum()
            for j in others:
                p[i, j] = kernel[i, j] / total
        return p

    p, q = conditional(t), conditional(s)
    n = len(s)
    return sum(p[i, j] * torch.log((p[i, j] + eps) / (q[i, j] + eps)) for i in range(n) for j in range(n) if i != j) / n


def test_pkt_paper_convention_is_kl_of_cosine_kernel_conditionals(harness):
    s, t = randn(6, 16, seed=1), randn(6, 12, seed=2)
    run = harness.on_features("pkt", {"e": s}, [{"e": t}], params={"convention": "paper"})
    assert_close(run(), explicit_pkt(s, t))
    assert_close(run(teachers=[{"e": s.clone()}]), ZERO, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- VID
def test_vid_is_gaussian_nll_with_softplus_variance(harness):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 6, 2, 2, seed=2)
    run = harness.on_features("vid", {"s": s}, [{"t": t}])
    regressor = run.modules()[0]
    variance = torch.log1p(torch.exp(regressor.alpha.detach())) + 1e-5
    assert_close(variance, torch.full((6,), 5.0))  # initial variance
    with torch.no_grad():
        regressor.alpha.copy_(randn(6, seed=3))
    variance = (torch.log1p(torch.exp(regressor.alpha.detach())) + 1e-5).view(1, -1, 1, 1)
    convs = [m for m in regressor.mean if isinstance(m, nn.Conv2d)]
    h = block_mean(s, 2)  # the larger (student) map is pooled to the teacher's size first
    for i, conv in enumerate(convs):
        h = conv1x1(conv.weight.detach()[:, :, 0, 0], h)
        h = torch.relu(h) if i < len(convs) - 1 else h
    expected = (0.5 * torch.log(variance) + (t - h) ** 2 / (2 * variance)).mean()
    assert_close(run(), expected)


# --------------------------------------------------------------------------- NST
def explicit_nst(s, t):
    size = min(s.shape[-1], t.shape[-1])
    s, t = block_mean(s, size), block_mean(t, size)
    fs, ft = unit_rows(s.flatten(2)), unit_rows(t.flatten(2))  # (B, C, HW), each channel normalised
    total = 0.0
    for b in range(s.shape[0]):
        k_ss = ((fs[b] @ fs[b].t()) ** 2).mean()
        k_tt = ((ft[b] @ ft[b].t()) ** 2).mean()
        k_st = ((fs[b] @ ft[b].t()) ** 2).mean()
        total = total + k_ss + k_tt - 2 * k_st
    return total / s.shape[0]


def test_nst_is_polynomial_mmd_of_channel_patterns(harness):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 6, 2, 2, seed=2)
    run = harness.on_features("nst", {"s": s}, [{"t": t}])
    assert_close(run(), explicit_nst(s, t))
    assert_close(run(teachers=[{"t": s.clone()}]), ZERO, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- FT
@pytest.mark.parametrize("convention", ["reference", "paper"])
def test_ft_is_l1_of_normalised_factors_plus_reconstruction(harness, convention):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 6, 2, 2, seed=2)
    params = {"reconstruction_weight": 0.3, "convention": convention}
    run = harness.on_features("ft", {"s": s}, [{"t": t}], params=params)
    modules = run.modules()[0]
    modules.eval()
    run.loss.eval()
    factor_t = modules.encoder(t)
    assert factor_t.shape[1] == 3  # paraphrase rate 0.5 of 6 channels
    factor_s = F.interpolate(modules.translator(s), size=(2, 2), mode="bilinear", align_corners=False)
    phi_s, phi_t = factor_s, factor_t
    if convention == "reference":  # RepDistiller FT.factor, p1 = 2: the channel mean of F^2, per position
        phi_s, phi_t = (factor_s**2).mean(dim=1), (factor_t**2).mean(dim=1)
    transfer = (unit_rows(phi_s.flatten(1)) - unit_rows(phi_t.flatten(1))).abs().mean()
    reconstruction = ((modules.decoder(factor_t) - t) ** 2).mean()
    assert_close(run(), transfer + 0.3 * reconstruction)


def test_ft_paraphraser_learns_only_from_reconstruction(harness):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 6, 2, 2, seed=2)
    run = harness.on_features("ft", {"s": s}, [{"t": t}], params={"reconstruction_weight": 0.0})
    run().backward()
    modules = run.modules()[0]
    assert all(p.grad is None or not p.grad.any() for p in modules.encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in modules.translator.parameters())


# --------------------------------------------------------------------------- AB
def explicit_ab(response, t, margin=1.0):
    hinge = torch.where(t > 0, torch.relu(margin - response) ** 2, torch.relu(margin + response) ** 2)
    return hinge.sum() / t.shape[0]


def test_ab_is_margin_hinge_on_teacher_sign(harness, known):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 8, 4, 4, seed=2)
    run = harness.on_features("ab", {"s": s}, [{"t": t}])
    known.identity_conv(run.modules()[0])
    assert_close(run(), explicit_ab(s, t) * 3 / 1000)  # RepDistiller AB.py's factor
    far = torch.sign(s) * (1.5 + s.abs())  # beyond the margin on the teacher's side -> 0
    assert_close(run(student={"s": far}, teachers=[{"t": far.clone()}]), ZERO)
    run2 = harness.on_features("ab", {"s": s}, [{"t": t}], params={"margin": 0.5, "convention": "paper"})
    known.identity_conv(run2.modules()[0])
    assert_close(run2(), explicit_ab(s, t, 0.5))


# --------------------------------------------------------------------------- FSP
def explicit_fsp(first, second):
    size = min(first.shape[-1], second.shape[-1])
    first, second = block_mean(first, size), block_mean(second, size)
    return torch.einsum("bihw,bjhw->bij", first, second) / (size * size)


def test_fsp_matches_flow_matrices_of_consecutive_stages(harness):
    student = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 8, 2, 2, seed=2), "s3": randn(4, 8, 2, 2, seed=5)}
    teacher = {"t1": randn(4, 8, 4, 4, seed=3), "t2": randn(4, 8, 2, 2, seed=4), "t3": randn(4, 8, 2, 2, seed=6)}
    run = harness.on_features("fsp", student, [teacher])
    assert all(isinstance(m, nn.Identity) for m in run.modules())  # equal widths: no connector
    s, t = list(student.values()), list(teacher.values())
    expected = sum(((explicit_fsp(s[i], s[i + 1]) - explicit_fsp(t[i], t[i + 1])) ** 2).mean() for i in range(2))
    assert_close(run(), expected)
    assert_close(run(teachers=[{k.replace("s", "t"): v.clone() for k, v in student.items()}]), ZERO)


def test_fsp_adapts_student_widths_with_connectors(harness):
    student = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 16, 2, 2, seed=2)}
    teacher = {"t1": randn(4, 6, 4, 4, seed=3), "t2": randn(4, 12, 2, 2, seed=4)}
    run = harness.on_features("fsp", student, [teacher])
    first = random_conv_connector(run.modules()[0], 6, 8, seed=10)
    second = random_conv_connector(run.modules()[1], 12, 16, seed=20)
    g_s = explicit_fsp(first(student["s1"]), second(student["s2"]))
    assert_close(run(), ((g_s - explicit_fsp(teacher["t1"], teacher["t2"])) ** 2).mean())


# --------------------------------------------------------------------------- SimKD
def test_simkd_projector_then_mse(harness):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 6, 2, 2, seed=2)
    run = harness.on_features("simkd", {"s": s}, [{"t": t}])
    projector = run.modules()[0].layers
    projector.eval()
    for i, layer in enumerate(projector):
        if isinstance(layer, nn.BatchNorm2d):
            with torch.no_grad():
                layer.running_mean.copy_(randn(layer.num_features, seed=30 + i))
                layer.running_var.copy_(randn(layer.num_features, seed=40 + i).abs() + 0.5)
    h = block_mean(s, 2)  # the larger map is pooled to the smaller size
    assert [m.out_channels for m in projector if isinstance(m, nn.Conv2d)] == [3, 3, 6]  # bottleneck 6 // 2
    for layer in projector:
        if isinstance(layer, nn.Conv2d):
            h = F.conv2d(h, layer.weight, padding=layer.padding)
        elif isinstance(layer, nn.BatchNorm2d):
            view = (1, -1, 1, 1)
            h = (h - layer.running_mean.view(view)) / torch.sqrt(layer.running_var.view(view) + layer.eps) * layer.weight.view(view) + layer.bias.view(view)
        else:
            h = torch.relu(h)
    assert_close(run(), ((h - t) ** 2).mean())


# --------------------------------------------------------------------------- ICKD
def explicit_ickd(s, t):
    def gram(x):
        f = x.flatten(2)
        return unit_rows(f @ f.transpose(1, 2))

    return ((gram(s) - gram(t)) ** 2).mean()


def test_ickd_channel_grams(harness):
    s, t = randn(4, 8, 4, 4, seed=1), randn(4, 8, 2, 2, seed=2)
    run = harness.on_features("ickd", {"s": s}, [{"t": t}], params={"connector": "auto", "convention": "paper"})
    assert isinstance(run.modules()[0], nn.Identity)  # equal widths; spatial size is irrelevant
    assert_close(run(), explicit_ickd(s, t))
    assert_close(run(teachers=[{"t": s.clone()}]), ZERO)
    wide = randn(4, 6, 2, 2, seed=3)
    run2 = harness.on_features("ickd", {"s": s}, [{"t": wide}], params={"convention": "paper"})
    connect = random_conv_connector(run2.modules()[0], 6, 8, seed=10)
    assert_close(run2(), explicit_ickd(connect(s), wide))


