"""Sweep building blocks without training: slots, job names, the general ConvNet's geometry."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hydra_plugins.cifar10_lab_launcher.naming import job_name, swept_keys, values
from hydra_plugins.cifar10_lab_launcher.slots import compact, plan_slots, resolve_devices
from src.errors import ConfigError, GeometryError
from src.models.convnet import auto_pools
from src.models.scaling import conv_widths
from tests.conftest import CONF, compose_config


def test_gpu_slots_pack_jobs_per_device_and_split_the_cores():
    slots = plan_slots(
        ["0", "1"], jobs_per_device=2, devices_per_job=1, cpu_jobs=None, n_jobs=10, cores=range(8)
    )
    assert [s.devices for s in slots] == [("0",), ("0",), ("1",), ("1",)]
    assert [s.cores for s in slots] == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_multi_gpu_jobs_get_disjoint_gpu_groups():
    slots = plan_slots(["0", "1", "2", "3", "4"], 1, 2, None, 10, range(4))
    assert [s.devices for s in slots] == [("0", "1"), ("2", "3")]
    with pytest.raises(ValueError, match="wants 4 GPUs but only 2"):
        plan_slots(["0", "1"], 1, 4, None, 3, range(4))


def test_cpu_slots_one_per_core_but_never_more_than_jobs():
    assert [s.cores for s in plan_slots([], 1, 1, None, 10, range(4))] == [(0,), (1,), (2,), (3,)]
    two = plan_slots([], 1, 1, None, 2, range(4))
    assert [s.cores for s in two] == [(0, 1), (2, 3)] and all(not s.devices for s in two)
    assert [s.cores for s in plan_slots([], 1, 1, 3, 5, range(2))] == [(0,), (1,), (0,)]


def test_device_lists(monkeypatch):
    assert resolve_devices([0, 2]) == ["0", "2"] and resolve_devices("cpu") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert resolve_devices("auto") == ["3", "5"]
    assert compact([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"


def test_job_names_hold_only_the_swept_values():
    command_line = ["data.root=/data/x", "model.width=30,50", "trainer.max_epochs=3"]
    job = ["data.root=/data/x", "model.width=50", "trainer.max_epochs=3", "seed=2"]
    keys = swept_keys(command_line, job)  # seed: set by the sweeper (hydra.sweeper.params)
    assert keys == ["model.width", "seed"]
    assert job_name(values(job, keys), "job0") == "width=50,seed=2"
    clash = ["model.width=8", "data.width=4", "experiment=a/b"]
    assert job_name(values(clash, swept_keys([], clash)), "x") == (
        "model.width=8,data.width=4,experiment=a_b"
    )
    assert job_name({}, "job7") == "job7"
    assert len(job_name({"optimizer.lr": "1" * 300}, "x")) <= 120


@pytest.mark.parametrize("depth", [2, 3, 4, 6])
@pytest.mark.parametrize("kernel", [2, 3, 5, 7])
def test_every_depth_and_kernel_fits_with_same_padding(depth, kernel):
    net = instantiate(
        {
            "_target_": "src.models.ConvNet",
            "channels": conv_widths(8, depth, 2, 64),
            "kernel_size": kernel,
            "padding": "same",
            "pool": "auto",
            "hidden": [16],
        }
    )
    pools = sum(isinstance(layer, torch.nn.MaxPool2d) for layer in net.features)
    assert net.out_size >= 1 and pools == min(depth, 5)


def test_auto_pools_reproduce_the_seed_geometries():
    # Seed 000: two 5x5 convs pool twice (5x5 maps); a third 5x5 conv fits only unpooled.
    assert auto_pools([5, 5], ["valid"] * 2, 32) == [True, True]
    assert auto_pools([5, 5, 5], ["valid"] * 3, 32) == [True, True, False]
    assert auto_pools([3] * 4, ["valid"] * 4, 32) == [True, True, False, True]  # 30,15,13,6,4,2,1
    # Seed 000 C: 3x3, 3x3, 2x2, 2x2 convs, 32->30->15->13->6->5->2->1.
    assert auto_pools([3, 3, 2, 2], ["valid"] * 4, 32) == [True, True, True, False]


def test_impossible_points_fail_with_the_layer_named(tmp_path):
    cfg = compose_config(
        "train", ["model=convnet", "model.depth=6", "model.kernel_size=7"], tmp_path / "run"
    )
    with pytest.raises(Exception) as info:
        instantiate(cfg.model.net)
    root = info.value
    while root.__cause__ is not None:
        root = root.__cause__
    assert isinstance(root, GeometryError) and "conv6" in str(root)
    with pytest.raises(ConfigError, match="model.depth must be at least 1"):
        conv_widths(8, 0)


def test_widths_grow_and_cap(tmp_path: Path):
    assert conv_widths(32, 4, 2, 128) == [32, 64, 128, 128]
    assert conv_widths(16, 3, 1, None) == [16, 16, 16]
    cfg = compose_config("train", ["model=convnet", "model.widths=[8,16]"], tmp_path / "run")
    convs = [m for m in instantiate(cfg.model.net).features if isinstance(m, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == [8, 16]


def sweep_grid(sweep: str, tmp_path: Path) -> list[list[str]]:
    """Every job's overrides of conf/sweep/<sweep>.yaml, expanded as the basic sweeper does."""
    cfg = compose_config("train", [f"sweep={sweep}"], tmp_path / "grid")
    parser = OverridesParser.create()
    axes = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        for o in parser.parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    ]
    return [[f"sweep={sweep}", *job] for job in itertools.product(*axes)]


@pytest.mark.parametrize(
    ("sweep", "jobs"),
    [
        ("seed000_width", 8),
        ("seed000_depth", 3),
        ("seed001_runs", 4),
        ("width", 5),
        ("hidden", 5),
        ("depth", 4),
        ("kernel", 4),
        ("lr", 7),
    ],
)
def test_every_point_of_every_study_sweep_builds(sweep, jobs, tmp_path):
    if sweep.startswith("seed") and not (CONF / "experiment" / "seed000_width.yaml").exists():
        pytest.skip("the seed experiments (conf/experiment/seed*.yaml) are not here yet")
    grid = sweep_grid(sweep, tmp_path)
    assert len(grid) == jobs
    nets = set()
    for overrides in grid:
        cfg = compose_config("train", overrides, tmp_path / "run")
        net = instantiate(cfg.model.net, num_classes=10)  # raises on an invalid geometry
        resolved = OmegaConf.to_container(cfg.model.net, resolve=True)
        nets.add((cfg.model.name, str(resolved), cfg.optimizer.lr, cfg.trainer.max_epochs))
        assert sum(p.numel() for p in net.parameters()) > 0
    assert len(nets) == jobs  # every job trains something different


def test_study_sweeps_reproduce_the_seed_grids(tmp_path):
    if not (CONF / "experiment" / "seed000_width.yaml").exists():
        pytest.skip("the seed experiments (conf/experiment/seed*.yaml) are not here yet")
    widths = [
        compose_config("train", job, tmp_path / "r").model.net.channels[0]
        for job in sweep_grid("seed000_width", tmp_path)
    ]
    assert widths == list(range(30, 171, 20))
    depth = [
        compose_config("train", job, tmp_path / "r")
        for job in sweep_grid("seed000_depth", tmp_path)
    ]
    assert [len(c.model.net.channels) for c in depth] == [2, 3, 4]
    assert depth[0].model.net.channels[0] == 90  # the width sweep's best, grown deeper
