"""MGD, CWD, SRD and PEFD against their formulas, written out here in plain torch from the
papers and the authors' code (named in each loss's docstring), with the loss's trainable
modules read back so that the expected value can be computed independently."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from kdzoo.api.connectors import count_parameters


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def conv(x, layer: nn.Conv2d, padding: int):
    return F.conv2d(x, layer.weight.detach(), layer.bias.detach(), padding=padding)


def linear(x, layer: nn.Linear):
    return x @ layer.weight.detach().t() + layer.bias.detach()


# --------------------------------------------------------------------------- MGD
def mgd_generate(masked, generator):
    first, _, second = generator.generation
    return conv(torch.relu(conv(masked, first, 1)), second, 1)


def test_mgd_regenerates_the_teacher_from_channel_masked_student_features(harness):
    s, t = torch.relu(randn(4, 8, 4, 4, seed=1)), torch.relu(randn(4, 6, 4, 4, seed=2))
    run = harness.on_features("mgd", {"s": s}, [{"t": t}])
    generator = run.modules()[0]
    assert isinstance(generator.aligner.align, nn.Conv2d) and generator.aligner.align.kernel_size == (1, 1)

    torch.manual_seed(123)
    value = run()
    torch.manual_seed(123)
    keep = torch.where(torch.rand(4, 6, 1, 1) < 0.15, 0.0, 1.0)  # the reference's draw: channels dropped w.p. 0.15
    aligned = conv(s, generator.aligner.align, 0)
    expected = (mgd_generate(aligned * keep, generator) - t).pow(2).sum() / 4
    assert_close(value, expected)
    unmasked = (mgd_generate(aligned, generator) - t).pow(2).sum() / 4
    assert keep.min() == 0 and abs(unmasked.item() - value.item()) > 1e-6  # the mask took part

    torch.manual_seed(7)
    other = run()
    assert abs(other.item() - value.item()) > 1e-6  # a fresh mask every call


def test_mgd_spatial_mask_drops_pixels_across_all_channels(harness):
    s, t = randn(2, 6, 4, 4, seed=3), randn(2, 6, 4, 4, seed=4)
    run = harness.on_features("mgd", {"s": s}, [{"t": t}], params={"mask": "spatial", "mask_ratio": 0.5})
    generator = run.modules()[0]
    assert isinstance(generator.aligner.align, nn.Identity)  # equal channels: no align, as the reference
    torch.manual_seed(5)
    value = run()
    torch.manual_seed(5)
    keep = torch.where(torch.rand(2, 1, 4, 4) > 1 - 0.5, 0.0, 1.0)
    assert_close(value, (mgd_generate(s * keep, generator) - t).pow(2).sum() / 2)


def test_mgd_without_masking_is_deterministic_and_resizes_to_the_teacher(harness):
    s, t = randn(2, 6, 8, 8, seed=5), randn(2, 6, 4, 4, seed=6)
    run = harness.on_features("mgd", {"s": s}, [{"t": t}], params={"mask_ratio": 0.0})
    generator = run.modules()[0]
    resized = F.interpolate(s, size=(4, 4), mode="bilinear", align_corners=False)
    expected = (mgd_generate(resized, generator) - t).pow(2).sum() / 2
    assert_close(run(), expected)
    assert_close(run(), expected)


# --------------------------------------------------------------------------- CWD
def channel_distributions(x, tau):
    flat = (x / tau).flatten(2)
    weights = torch.exp(flat - flat.max(dim=2, keepdim=True).values)
    return weights / weights.sum(dim=2, keepdim=True)


def explicit_cwd(s, t, tau):
    p_s, p_t = channel_distributions(s, tau), channel_distributions(t, tau)
    n, c = t.shape[:2]
    return tau**2 * (p_t * (p_t.log() - p_s.log())).sum() / (n * c)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_is_the_kl_of_each_channels_spatial_softmax(harness, tau):
    s, t = randn(3, 5, 4, 4, seed=1), randn(3, 5, 4, 4, seed=2)
    run = harness.on_features("cwd", {"s": s}, [{"t": t}], params={"temperature": tau})
    assert isinstance(run.modules()[0].align, nn.Identity)
    assert_close(run(), explicit_cwd(s, t, tau))
    assert_close(run(teachers=[{"t": s}]), torch.tensor(0.0))
    shifted = s + randn(3, 5, 1, 1, seed=3)  # a per-channel constant leaves every spatial softmax unchanged
    assert_close(run(teachers=[{"t": shifted}]), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_cwd_aligns_the_student_and_divides_by_the_teachers_channels(harness):
    s, t = randn(2, 8, 4, 4, seed=4), randn(2, 6, 4, 4, seed=5)
    run = harness.on_features("cwd", {"s": s}, [{"t": t}], params={"temperature": 2.0})
    align = run.modules()[0].align
    assert isinstance(align, nn.Conv2d) and align.bias is not None
    assert_close(run(), explicit_cwd(conv(s, align, 0), t, 2.0))


# --------------------------------------------------------------------------- SRD
def batch_normalise(x, eps):
    return (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, unbiased=False) + eps)


def test_srd_is_the_log_sum_of_fourth_powers_of_batch_normalised_differences(harness):
    s, t = randn(6, 5, seed=1), torch.relu(randn(6, 7, seed=2))
    run = harness.on_features("srd", {"e": s}, [{"e": t}])
    modules = run.modules()[0]
    projected = batch_normalise(linear(s, modules.projector), 1e-4)
    expected = torch.log((projected - batch_normalise(t, 1e-4)).abs().pow(4).sum())
    assert_close(run(), expected)


def test_srd_exponent_and_scale_free_teacher(harness):
    s, t = randn(6, 5, seed=3), randn(6, 5, seed=4)
    run = harness.on_features("srd", {"e": s}, [{"e": t}], params={"exponent": 2.0, "bn_eps": 1e-12})
    modules = run.modules()[0]
    assert isinstance(modules.projector, nn.Linear)  # a projector even when the widths agree
    projected = batch_normalise(linear(s, modules.projector), 1e-12)
    assert_close(run(), torch.log((projected - batch_normalise(t, 1e-12)).pow(2).sum()))
    # the teacher is batch-normalised: rescaling and shifting it changes nothing
    assert_close(run(teachers=[{"e": 10.0 * t + 3.0}]), run())


# --------------------------------------------------------------------------- PEFD
def test_pefd_is_the_cosine_distance_to_the_mean_of_relu_projectors(harness):
    s, t = randn(6, 5, seed=1), torch.relu(randn(6, 7, seed=2))
    run = harness.on_features("pefd", {"e": s}, [{"e": t}])
    ensemble = run.modules()[0]
    assert len(ensemble.projectors) == 3 and count_parameters(run.loss) == 3 * (5 * 7 + 7)
    mean = sum(torch.relu(linear(s, p)) for p in ensemble.projectors) / 3
    cosine = (mean * t).sum(dim=1) / (mean.norm(dim=1) * t.norm(dim=1))
    assert_close(run(), (1 - cosine).mean())


def test_pefd_ignores_the_teachers_scale(harness):
    s, t = randn(4, 5, seed=3), randn(4, 6, seed=4)
    run = harness.on_features("pefd", {"e": s}, [{"e": t}], params={"num_projectors": 1})
    (projector,) = run.modules()[0].projectors
    aligned_teacher = 2.0 * torch.relu(linear(s, projector))
    assert_close(run(teachers=[{"e": aligned_teacher}]), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert run().item() > 0


# --------------------------------------------------------------------------- shared
@pytest.mark.parametrize("name", ["mgd", "cwd"])
def test_map_methods_sum_their_layer_pairs(harness, name):
    student = {"s1": randn(2, 4, 4, 4, seed=1), "s2": randn(2, 4, 2, 2, seed=2)}
    teacher = {"t1": randn(2, 4, 4, 4, seed=3), "t2": randn(2, 4, 2, 2, seed=4)}
    deterministic = {"mask_ratio": 0.0} if name == "mgd" else {}
    both = harness.on_features(
        name, student, [teacher], params={"student_layers": ["s1", "s2"], "teacher_layers": ["t1", "t2"], **deterministic}
    )
    singles = []
    for index, (s_name, t_name) in enumerate((("s1", "t1"), ("s2", "t2"))):
        params = {"student_layers": [s_name], "teacher_layers": [t_name], **deterministic}
        single = harness.on_features(name, student, [teacher], params=params)
        single.loss.per_teacher[0][0].load_state_dict(both.loss.per_teacher[0][index].state_dict())
        singles.append(single())
    assert singles[0].item() > 0 and singles[1].item() > 0
    assert_close(both(), singles[0] + singles[1])
