"""The seed networks and recipes: presets build and match the spec, experiments compose and train,
and the reproduction script builds its table only from recorded runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from src import reproduce
from src.models.convnet import count_parameters, layer_summary
from src.training import final_weights_rule, train
from tests.conftest import CONF, compose_config, real_overrides, run_cli

# Parameter counts of the layer lists in seed-models.md, counted by hand (10 classes).
PRESETS = {
    "tutorial": 62_006,  # 456 + 2,416 + 48,120 + 10,164 + 850
    "conv2": 661_914,  # width 30: 2,280 + 150,200 + 500,100 + 8,484 + 850
    "conv3": 1_584_330,  # 7,600 + 450,180 + 1,080,240 + 24,100 + 20,200 + 2,010
    "conv4": 678_630,  # 2,800 + 162,180 + 173,040 + 288,300 + 30,100 + 20,200 + 2,010
    "cnn3": 581_866,  # 448 + 4,640 + 18,496 + 524,800 + 32,832 + 650
    "vgg6": 5_851_338,  # convs 1,126,080 + 4,195,328 + 524,800 + 5,130
    "bn6": 20_715_146,  # convs 1,572,768 + batch norm 2,016 + 18,875,392 + 262,400 + 2,570
    "lenet3": 541_094,  # 448 + 4,640 + 18,496 + 512,500 + 5,010
}
# The studies' recipes (conf/experiment/ also holds recipes of our own, such as tutorial_fast).
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("seed*.yaml"))
NO_VALIDATION = {
    "seed000_tutorial",
    "seed000_width",
    "seed000_conv3",
    "seed000_conv4",
    "seed001_run1",
    "seed001_run2",
    "seed001_run3",
    "seed003_bn6",
}


def compose_only(*overrides: str):
    """The composed train config, without Hydra's runtime (enough to read or build parts)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build(*overrides: str) -> torch.nn.Module:
    return instantiate(compose_only(*overrides).model.net)


def test_every_preset_has_a_count_and_every_experiment_a_table_row():
    general = {"convnet"}  # the sweeps' general network, not a study's (README "Sweeps")
    presets = {p.stem for p in (CONF / "model").glob("*.yaml") if not p.stem.startswith("_")}
    assert set(PRESETS) == presets - general
    assert set(EXPERIMENTS) == {row.experiment for row in reproduce.ROWS}
    assert len(EXPERIMENTS) == 12


@pytest.mark.parametrize(("name", "params"), PRESETS.items())
def test_preset_builds_trains_and_matches_the_spec(name, params):
    net = build(f"model={name}")
    assert count_parameters(net) == params
    images = torch.randn(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(net(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    rows = layer_summary(net, (3, 32, 32))
    assert sum(p for _, _, p in rows) == params
    assert rows[-1][1] == (10,)


def test_bn6_summary_matches_seed_003_torchinfo_rows():
    rows = layer_summary(build("model=bn6"), (3, 32, 32))
    convs = [(shape, p) for layer, shape, p in rows if "Conv2d" in layer or "BatchNorm" in layer]
    # The first ten rows of the study's torchinfo summary (it was cut off there).
    assert convs[:8] == [
        ((16, 30, 30), 448),
        ((16, 30, 30), 32),
        ((32, 28, 28), 4640),
        ((32, 28, 28), 64),
        ((64, 12, 12), 18496),
        ((64, 12, 12), 128),
        ((128, 10, 10), 73856),
        ((128, 10, 10), 256),
    ]
    assert [layer for layer, _, _ in rows if "Flatten" in layer] and (18432,) in [
        shape for _, shape, _ in rows
    ]


@pytest.mark.parametrize(
    ("overrides", "params"),
    [
        (["model=conv2", "model.n=170"], 5076 * 170 + 509_634),  # seed 000's widest
        (["model=tutorial", "model.c1=128"], 120_078),  # seed 001 run 3
        (["experiment=seed001_run3"], 120_078),
        (["experiment=seed000_width", "model.n=90"], 5076 * 90 + 509_634),
        (["model=vgg6", "model.batch_norm=true", "model.dropout=0.5"], 5_851_338 + 2 * 864),
    ],
)
def test_study_knobs_are_one_override_each(overrides, params):
    assert count_parameters(build(*overrides)) == params


@pytest.mark.parametrize("preset", [*PRESETS, "convnet"])
def test_every_preset_takes_the_same_knobs(preset):
    net = build(
        f"model={preset}",
        "model.widths=[8,12]",
        "model.kernel_size=3",
        "model.padding=1",
        "model.pool=auto",  # vgg6 and bn6 list one pool per layer of their own depth
        "model.conv_dropout=0",
        "model.batch_norm=true",
        "model.hidden=[20]",
        "model.dropout=0.25",
    )
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(8, (3, 3)), (12, (3, 3))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features) == 2
    linears = [m.out_features for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert linears == [20, 10]
    assert [m.p for m in net.classifier if isinstance(m, torch.nn.Dropout)] == [0.25]


@pytest.mark.parametrize("preset", ["tutorial", "cnn3", "lenet3"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_one_kernel_size_override_for_every_preset(preset, kernel):
    # python -m src.train -m model=tutorial,cnn3,lenet3 model.kernel_size=3,5
    net = build(f"model={preset}", f"model.kernel_size={kernel}")
    assert {m.kernel_size for m in net.features if isinstance(m, torch.nn.Conv2d)} == {
        (kernel, kernel)
    }
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_a_per_layer_list_of_another_depth_says_what_to_give():
    with pytest.raises(Exception, match=r"model.pool has 6 values .* for 4 layers"):
        build("model=vgg6", "model.widths=[32,64,128,128]")
    net = build("model=vgg6", "model.widths=[32,64,128,128]", "model.pool=[false,true,false,true]")
    assert net.out_size == 8


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_pins_its_recipe(name):
    cfg = compose_only(f"experiment={name}")
    final_weights_rule(cfg)  # what src.train applies to every config
    assert not cfg.get("scheduler")  # scheduler=none: a constant learning rate
    assert cfg.data.augment == ("seed004" if name.startswith("seed004") else "none")
    assert cfg.data.normalize == "seed"
    optimizer = cfg.optimizer
    if name.startswith("seed004"):
        assert optimizer._target_ == "torch.optim.Adam" and optimizer.lr == 0.001
        assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.data.val_from) == (100, 30, "test")
    else:
        assert optimizer._target_ == "torch.optim.SGD" and optimizer.weight_decay == 0
    if name.startswith("seed002"):
        assert (cfg.data.batch_size, cfg.data.val_size, cfg.trainer.max_epochs) == (20, 0.2, 30)
        assert optimizer.momentum == 0
        checkpoint = cfg.callbacks.model_checkpoint
        assert (checkpoint.monitor, checkpoint.mode) == ("val/loss", "min")
    else:
        assert cfg.callbacks.model_checkpoint.monitor is None  # the final weights are tested
    if name in NO_VALIDATION:
        assert cfg.data.val_size == 0 and optimizer.momentum == 0.9
    if name == "seed003_bn6":
        assert (cfg.data.batch_size, cfg.trainer.max_epochs, optimizer.lr) == (16, 50, 0.001)


def test_overrides_still_apply_over_an_experiment():
    cfg = compose_only("experiment=seed000_conv3", "optimizer.lr=0.01", "data.batch_size=32")
    assert (cfg.optimizer.lr, cfg.data.batch_size, cfg.model.name) == (0.01, 32, "conv3")


def one_step(tmp_path: Path, data_root: Path, name: str, *extra: str, run: str = "run") -> dict:
    """Train an experiment for one epoch of at most `limit` batches on the tiny synthetic data."""
    overrides = [
        f"experiment={name}",
        "data.source=folder",
        f"data.root={data_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "threads=1",
        *extra,
    ]
    return train(compose_config("train", overrides, tmp_path / run))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_one_step(name, folder_data, tmp_path):
    metrics = one_step(tmp_path, folder_data, name)
    per_class = metrics["test/acc_per_class"].values()  # as many test images in every class
    assert metrics["status"] == "finished"
    assert metrics["test/acc"] == pytest.approx(sum(per_class) / len(per_class), abs=0.01)
    checkpoint = Path(metrics["best_checkpoint"])
    if name in NO_VALIDATION:
        assert metrics["val/acc_best"] is None  # no validation loop ran
        assert checkpoint.name == "final.ckpt"
    else:
        assert metrics["val/acc_best"] is not None
        assert checkpoint.name == ("best.ckpt" if name.startswith("seed002") else "final.ckpt")
    assert checkpoint.exists() and metrics["epoch_time_s"] is not None


def test_seed004_augments_training_batches_and_the_others_do_not(folder_data, tmp_path):
    def datamodule(name):
        cfg = compose_only(f"experiment={name}", "data.source=folder", f"data.root={folder_data}")
        return instantiate(cfg.data)

    assert datamodule("seed004_lenet3").augment_fn is not None
    for name in EXPERIMENTS:
        if not name.startswith("seed004"):
            assert datamodule(name).augment_fn is None, name


def test_same_seed_same_result(folder_data, tmp_path):
    """Augmentation, dropout, shuffling and initialisation all follow the seed."""
    extra = ("++trainer.limit_train_batches=3", "data.batch_size=16")
    a = one_step(tmp_path, folder_data, "seed004_lenet3", "seed=5", *extra, run="a")
    b = one_step(tmp_path, folder_data, "seed004_lenet3", "seed=5", *extra, run="b")
    c = one_step(tmp_path, folder_data, "seed004_lenet3", "seed=6", *extra, run="c")
    assert a["test/loss"] == b["test/loss"] and a["test/acc"] == b["test/acc"]
    assert a["test/loss"] != c["test/loss"]


def test_no_validation_tests_the_final_weights(folder_data, tmp_path):
    metrics = one_step(
        tmp_path, folder_data, "seed000_tutorial", "trainer.max_epochs=2", "data.batch_size=16"
    )
    run = tmp_path / "run"
    final = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == last["epoch"] == 1
    assert all(torch.equal(final["state_dict"][k], v) for k, v in last["state_dict"].items())
    assert metrics["epochs"] == 2 and metrics["best_checkpoint"].endswith("final.ckpt")


@pytest.mark.slow
def test_cli_runs_an_experiment_by_name_and_prints_the_layers(folder_data, tmp_path):
    result = run_cli(
        "src.train",
        "experiment=seed001_run3",
        "model.c1=32",  # an override on top of the recipe still applies
        "data.source=folder",
        f"data.root={folder_data}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "threads=1",
        f"hydra.run.dir={tmp_path / 'cli'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tutorial: layers" in result.stdout
    assert "32 x 28 x 28" in result.stdout  # conv1 with the overridden width
    config = (tmp_path / "cli" / "config.yaml").read_text()
    assert "batch_size: 4" in config and "c1: 32" in config


# -- on the real copy (skipped where ../shared is absent) --------------------------------------


@pytest.mark.parametrize(
    ("name", "n_train", "n_val"),
    [
        ("seed000_tutorial", 50_000, 0),
        ("seed002_model1", 40_000, 10_000),
        ("seed004_lenet3", 50_000, 0),
    ],
)
def test_recipes_split_the_real_copy_as_the_studies_did(name, n_train, n_val, real_data):
    cfg = compose_only(f"experiment={name}", "data.source=folder", f"data.root={real_data}")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert (len(dm.train_idx), len(dm.val_idx)) == (n_train, n_val)
    if name.startswith("seed004"):
        assert len(dm.val_dataloader().sampler) == 5000  # the test split validates


@pytest.mark.slow
def test_tutorial_experiment_lands_near_the_published_53_percent(real_data, tmp_path):
    """The issue's acceptance check: within 2 points of 53% (this copy is JPEG: expect ~54%)."""
    overrides = ["experiment=seed000_tutorial", "threads=1", *real_overrides(real_data)]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert abs(metrics["test/acc"] - 53) <= 2, metrics["test/acc"]
