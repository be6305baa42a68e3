"""kdzoo/connectors.py: shape adapters shared by all feature losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from kdzoo.api.connectors import (
    ConvConnector,
    as_embedding,
    as_feature_map,
    count_parameters,
    embedding_shape,
    feature_map_shape,
    make_connector,
)


def test_conv1x1_maps_channels_and_resizes_bilinearly():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 4)
    connector = make_connector("conv1x1", x.shape, (2, 6, 2, 2))
    assert isinstance(connector, ConvConnector)
    connector.eval()
    weight = torch.randn(6, 4)
    with torch.no_grad():
        connector.conv.weight.copy_(weight.view(6, 4, 1, 1))
        connector.bn.running_mean.fill_(0.5)
        connector.bn.running_var.fill_(4.0)
        connector.bn.weight.fill_(2.0)
        connector.bn.bias.fill_(-1.0)
    projected = torch.einsum("oc,bchw->bohw", weight, x)
    normalised = (projected - 0.5) / torch.sqrt(torch.tensor(4.0 + connector.bn.eps)) * 2.0 - 1.0
    expected = F.interpolate(normalised, size=(2, 2), mode="bilinear", align_corners=False)
    assert_close(connector(x), expected)


def test_conv3x3_keeps_size_and_skips_resize_without_spatial_matching():
    x = torch.randn(2, 3, 5, 5)
    assert make_connector("conv3x3", x.shape, (2, 7, 5, 5))(x).shape == (2, 7, 5, 5)
    unmatched = make_connector("conv1x1", x.shape, (2, 7, 2, 2), match_spatial=False)
    assert unmatched(x).shape == (2, 7, 5, 5)


def test_linear_and_mlp_map_the_last_dimension():
    x = torch.randn(3, 5)
    linear = make_connector("linear", x.shape, (3, 2))
    assert isinstance(linear, nn.Linear)
    assert_close(linear(x), x @ linear.weight.t() + linear.bias)
    mlp = make_connector("mlp", x.shape, (3, 2), hidden_dim=9)
    first, _, second = mlp
    assert first.out_features == 9
    assert_close(mlp(x), F.relu(x @ first.weight.t() + first.bias) @ second.weight.t() + second.bias)
    tokens = torch.randn(3, 4, 5)
    assert make_connector("linear", tokens.shape, (3, 4, 8))(tokens).shape == (3, 4, 8)


def test_identity_and_auto():
    assert isinstance(make_connector("identity", (2, 4, 3, 3), (2, 4, 3, 3)), nn.Identity)
    assert isinstance(make_connector("auto", (2, 4, 3, 3), (2, 4, 3, 3)), nn.Identity)
    assert isinstance(make_connector("auto", (2, 4, 3, 3), (2, 4, 1, 1), match_spatial=False), nn.Identity)
    assert isinstance(make_connector("auto", (2, 4, 3, 3), (2, 5, 3, 3)), ConvConnector)
    assert isinstance(make_connector("auto", (2, 4), (2, 5)), nn.Linear)
    with pytest.raises(ValueError, match=r"'identity' needs matching shapes.*\(2, 4, 3, 3\).*\(2, 5, 3, 3\)"):
        make_connector("identity", (2, 4, 3, 3), (2, 5, 3, 3))


def test_bad_kinds_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown connector kind 'conv5x5'"):
        make_connector("conv5x5", (2, 4, 3, 3), (2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"needs \(B, C, H, W\) maps.*as_feature_map"):
        make_connector("conv1x1", (2, 10, 4), (2, 4, 3, 3))
    with pytest.raises(ValueError, match="equal N"):
        make_connector("linear", (2, 10, 4), (2, 9, 4))


def test_as_feature_map_lays_tokens_on_their_grid():
    torch.manual_seed(0)
    tokens = torch.randn(2, 16, 3)
    grid = as_feature_map(tokens)
    assert grid.shape == (2, 3, 4, 4)
    # token n sits at row n // 4, column n % 4
    assert_close(grid[:, :, 1, 2], tokens[:, 1 * 4 + 2, :])
    with_cls = torch.cat([torch.full((2, 1, 3), 99.0), tokens], dim=1)
    assert_close(as_feature_map(with_cls), grid)  # the CLS token is dropped
    maps = torch.randn(2, 3, 4, 4)
    assert as_feature_map(maps) is maps
    assert feature_map_shape((2, 50, 8)) == (2, 8, 7, 7)
    assert feature_map_shape((2, 10, 3)) == (2, 3, 3, 3)  # CLS + 3x3 patches
    with pytest.raises(ValueError, match=r"\(2, 11, 3\).*N=11.*N-1=10"):
        feature_map_shape((2, 11, 3))
    with pytest.raises(ValueError, match="not a"):
        feature_map_shape((2, 5))


def test_embedding_helpers_flatten_pooled_features():
    x = torch.randn(3, 4, 1, 1)
    assert as_embedding(x).shape == (3, 4)
    assert embedding_shape(x.shape) == (3, 4)
    with pytest.raises(ValueError):
        embedding_shape((3,))


def test_count_parameters():
    connector = make_connector("conv1x1", (2, 4, 3, 3), (2, 6, 3, 3))
    assert count_parameters(connector) == 4 * 6 + 6 + 6  # conv (no bias) + BN weight and bias
    connector.bn.weight.requires_grad_(False)
    assert count_parameters(connector, trainable_only=True) == 4 * 6 + 6
    assert count_parameters(nn.Identity()) == 0
