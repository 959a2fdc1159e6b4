"""The ConvNet builder: shapes, parameter counts and geometry checks."""

from __future__ import annotations

import pytest
import torch

from src.errors import ConfigError, GeometryError
from src.models.convnet import ConvNet, count_parameters, layer_summary


def tutorial() -> ConvNet:
    return ConvNet(channels=[6, 16], kernel_size=5, hidden=[120, 84])


def test_tutorial_net_matches_the_pytorch_tutorial():
    net = tutorial()
    assert net.flat_features == 16 * 5 * 5
    assert count_parameters(net) == 62006  # the tutorial's Net, counted by hand
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_per_layer_options_and_same_padding():
    net = ConvNet(
        channels=[8, 8, 8],
        kernel_size=[3, 5, 2],
        padding="same",
        pool=[True, False, True],
        batch_norm=True,
        conv_dropout=[0, 0.5, 0],
        hidden=[32],
        dropout=0.5,
    )
    assert net.out_size == 8  # 32 -> pool 16 -> 16 -> pool 8
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    kinds = [type(m).__name__ for m in net.features]
    assert kinds.count("BatchNorm2d") == 3 and kinds.count("Dropout") == 1


def test_kernel_too_large_for_its_input_names_the_layer():
    with pytest.raises(GeometryError, match=r"conv3 \(kernel 7, padding valid\).*5x5 input"):
        ConvNet(channels=[6, 16, 32], kernel_size=[5, 5, 7], pool=True)  # 32->28->14->10->5
    with pytest.raises(GeometryError, match="conv4"):
        ConvNet(channels=[6, 16, 32, 64], kernel_size=5, pool=[True, True, False, False])


def test_auto_pools_place_the_pools_where_they_fit():
    net = ConvNet(channels=[100, 180, 240], kernel_size=5)  # seed 000 B: 28, 14, 10, 5, 1
    assert [type(m).__name__ for m in net.features].count("MaxPool2d") == 2 and net.out_size == 1


def test_pool_on_a_1x1_map_is_a_geometry_error():
    with pytest.raises(GeometryError, match="pool after conv3 gets a 1x1 map"):
        ConvNet(channels=[100, 180, 240], kernel_size=5, pool=True)


def test_per_layer_lists_must_match_depth():
    with pytest.raises(ConfigError, match=r"model.kernel_size has 2 values \[3, 3\] for 3 layers"):
        ConvNet(channels=[8, 8, 8], kernel_size=[3, 3])
    with pytest.raises(ConfigError, match="channels must all be positive"):
        ConvNet(channels=[8, 0])


def test_layer_summary_lists_shapes_and_parameters():
    rows = layer_summary(tutorial(), (3, 32, 32))
    assert rows[0] == ("features.0 (Conv2d)", (6, 28, 28), 456)
    assert rows[-1] == ("classifier.5 (Linear)", (10,), 850)
    assert sum(p for _, _, p in rows) == 62006
