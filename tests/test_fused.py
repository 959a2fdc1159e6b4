"""Fused sweeps (src.fused): each member of a fused group is the run it would have been alone."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.checkpoint import load_classifier
from src.data.loader import pixels_to_float
from src.fused import train_group
from src.fused.optim import GroupStep
from src.training import train
from tests.conftest import compose_config, tiny_overrides
from tests.signals import exit_status, signal_at

# Members differ in seed and in what each may hold for itself.
MEMBERS = [
    ["seed=1", "optimizer.lr=0.01"],
    ["seed=2", "optimizer.lr=0.03", "optimizer.momentum=0.5", "model.label_smoothing=0.1"],
    ["seed=4", "optimizer.lr=0.01"],  # the first one's SGD settings: one step for both
    ["seed=3", "optimizer=adam", "optimizer.lr=0.002", "scheduler=cosine"],
]
# With batch norm, a conv bias before it has no true gradient: Adam scales its rounding noise
# up to steps of about lr, in a single run as much as in a fused one, so the fourth member
# uses SGD with weight decay there.
BN_MEMBERS = [*MEMBERS[:3], ["seed=3", "optimizer.lr=0.02", "optimizer.weight_decay=0.01"]]
# A sweep of seeds and learning rates: every member's SGD has the same settings but its lr, so
# the group steps its stacked weights in one update (src.fused.optim.GroupStep).
SGD_MEMBERS = [["seed=1", "optimizer.lr=0.01"], ["seed=2", "optimizer.lr=0.03"], ["seed=4"]]


def config(tmp_path: Path, data: Path, shared: list[str], own: list[str], run: Path):
    """A job's config; composing it also makes it Hydra's current job (src.train reads that)."""
    overrides = [*tiny_overrides(tmp_path, data), "trainer.max_epochs=3", *shared, *own]
    return compose_config("train", overrides, run)


def checkpoint(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def weights(run: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return checkpoint(run, name)["state_dict"]


def optimizer_tensors(run: Path) -> dict[str, torch.Tensor]:
    """The optimizer state's tensors in last.ckpt (momentum buffers, Adam's moments), by name."""
    state = checkpoint(run)["optimizer_states"][0]["state"]
    return {
        f"{index}.{name}": value
        for index, values in state.items()
        for name, value in values.items()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    }


@pytest.mark.parametrize(
    "shared, members",
    [
        pytest.param([], MEMBERS, id="plain"),
        pytest.param(
            [
                "data.augment=flip_crop",
                "model.batch_norm=true",
                "model.dropout=0.3",
                "model.conv_dropout=0.2",
            ],
            BN_MEMBERS,
            id="augment-bn-dropout",
        ),  # fmt: skip
        pytest.param(
            ["scheduler=cosine", "optimizer.nesterov=true", "optimizer.weight_decay=0.001"],
            SGD_MEMBERS,
            id="sgd-stacked-step",
        ),
        pytest.param(
            [
                "data.batch_size=2",
                "trainer.max_epochs=6",
                "data.augment=flip_crop",
                "model.dropout=0.3",
            ],
            MEMBERS,
            # Not with batch norm: on the tiny synthetic images some channels have almost no
            # variance, and BN turns rounding into chaos (two single runs that differ only in
            # their thread count differ by up to 2.6 after 288 steps), so there 42 steps it is.
            id="288-steps",
            marks=pytest.mark.slow,
        ),  # fmt: skip
    ],
)
def test_each_member_trains_the_weights_of_its_own_run(shared, members, folder_data, tmp_path):
    """Three epochs of batch 8 over 108 images (42 steps; 288 steps at batch 2 for the slow
    case), four members with different seeds,
    learning rates, optimizers, schedules and label smoothing: every weight equals the single
    run's to float32 rounding. Grouped convolutions and batched matmuls add in another order
    than a single net's, so results agree to about 1e-6 relative per step, and a few dozen
    steps of SGD carry that to ~1e-5; a wrong data order, seed or draw differs by ~1e-1."""
    dirs = [tmp_path / "fused" / str(i) for i in range(len(members))]
    cfgs = [
        config(tmp_path, folder_data, shared, own, d) for own, d in zip(members, dirs, strict=True)
    ]
    original = GroupStep._step
    with mock.patch.object(GroupStep, "_step", autospec=True, side_effect=original) as stacked:
        results = train_group(cfgs, dirs)
    # Plain-SGD members take the stacked update; a group with Adam steps member by member.
    assert stacked.called == (members is SGD_MEMBERS)
    for i, own in enumerate(members):
        alone = train(config(tmp_path, folder_data, shared, own, tmp_path / "alone" / str(i)))
        mine, theirs = weights(dirs[i]), weights(tmp_path / "alone" / str(i))
        assert mine.keys() == theirs.keys()
        for name in theirs:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5)
        # The optimizer state a resume continues from (momentum buffers, Adam's moments) too.
        mine, theirs = optimizer_tensors(dirs[i]), optimizer_tensors(tmp_path / "alone" / str(i))
        assert mine.keys() == theirs.keys()
        for name in theirs:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5)
        assert results[i]["status"] == "finished"
        assert results[i]["test/acc"] == pytest.approx(alone["test/acc"], abs=1e-6)
        assert results[i]["val/acc_best"] == pytest.approx(alone["val/acc_best"], abs=1e-6)
        # Its checkpoint holds its own tensors only, not the group's stacks they are views of.
        tensors = [*weights(dirs[i]).values(), *optimizer_tensors(dirs[i]).values()]
        assert all(t.untyped_storage().nbytes() == t.nbytes for t in tensors)
    # Members really differ from each other (not one run copied K times).
    assert not torch.allclose(
        weights(dirs[0])["net.features.0.weight"], weights(dirs[1])["net.features.0.weight"]
    )


def test_a_job_stopped_mid_epoch_trains_alone_from_where_it_stopped(folder_data, tmp_path):
    """A single run stopped by SIGTERM inside its second epoch (its last.ckpt is a mid-epoch
    save), relaunched beside another job: it cannot join a group (a member resumes at an
    epoch's start), so it trains alone from its batch on and ends with the weights of the run
    that was never stopped."""
    reference = tmp_path / "reference"
    train(config(tmp_path, folder_data, [], ["seed=1"], reference))
    stopped, other = tmp_path / "stopped", tmp_path / "other"
    stop = config(tmp_path, folder_data, [], ["seed=1", signal_at(20, "SIGTERM")], stopped)
    assert exit_status(lambda: train(stop), "SIGTERM") == 128 + signal.SIGTERM
    cfgs = [
        config(tmp_path, folder_data, [], ["seed=1", "resume=true"], stopped),  # as the launcher
        config(tmp_path, folder_data, [], ["seed=2"], other),
    ]
    results = train_group(cfgs, [stopped, other])
    assert [r["status"] for r in results] == ["finished", "finished"]
    assert results[0]["resumed_from"].endswith("last.ckpt") and "fused_members" not in results[0]
    mine, theirs = weights(stopped), weights(reference)
    assert all(torch.equal(mine[name], theirs[name]) for name in theirs)


def test_each_member_folder_is_a_single_runs_folder(folder_data, tmp_path):
    """config.yaml, train.log, metrics.json, TensorBoard scalars, hparams and pictures, and
    checkpoints that load_classifier reads as single networks and that score the member's
    test accuracy; a member with a huge learning rate diverges and leaves the group."""
    members = [["seed=1"], ["seed=2", "optimizer.lr=1e6"], ["seed=3", "optimizer.lr=0.03"]]
    dirs = [tmp_path / str(i) for i in range(3)]
    cfgs = [config(tmp_path, folder_data, [], own, d) for own, d in zip(members, dirs, strict=True)]
    results = train_group(cfgs, dirs)
    assert [r["status"] for r in results] == ["finished", "diverged", "finished"]
    assert "lower optimizer.lr" in results[1]["error"] and results[1]["lr"] == 1e6
    for i in (0, 2):
        run = dirs[i]
        assert json.loads((run / "metrics.json").read_text()) == results[i]
        assert f"seed: {i + 1}" in (run / "config.yaml").read_text()
        log = (run / "train.log").read_text()
        assert "epoch 3/3: train/loss" in log and "test accuracy" in log
        events = EventAccumulator(str(run / "tensorboard")).Reload()
        scalars = set(events.Tags()["scalars"])
        assert {"train/loss", "val/acc", "val/acc_best", "test/acc", "params"} <= scalars
        assert "images/confusion_test" in events.Tags()["images"]
        model = load_classifier(run / "checkpoints" / "best.ckpt")
        dm = instantiate(cfgs[i].data)
        dm.setup("test")
        images, labels = dm.test_images, dm.test_labels
        with torch.no_grad():
            preds = model(pixels_to_float(images, hwc=True)).argmax(1)
        acc = float((preds == labels).float().mean() * 100)
        assert acc == pytest.approx(results[i]["test/acc"], abs=1e-3)
    assert "diverged" in (dirs[1] / "train.log").read_text()


def test_a_group_whose_members_all_diverge_records_each_and_ends(folder_data, tmp_path):
    members = [["seed=1", "optimizer.lr=1e6"], ["seed=2", "optimizer.lr=1e7"]]
    dirs = [tmp_path / str(i) for i in range(2)]
    cfgs = [config(tmp_path, folder_data, [], own, d) for own, d in zip(members, dirs, strict=True)]
    results = train_group(cfgs, dirs)
    assert [r["status"] for r in results] == ["diverged", "diverged"]
    for run in dirs:
        assert json.loads((run / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_a_killed_group_resumes_each_member_from_its_last_checkpoint(folder_data, tmp_path):
    """Killed at the start of its third epoch (after the second epoch's checkpoints), a group
    run again continues each member from its own last.ckpt: the same weights as unkilled."""
    from src.fused import group as fused_group

    members = [["seed=1", "scheduler=onecycle"], ["seed=2", "optimizer.lr=0.03"]]
    shared = ["data.augment=flip_crop", "model.dropout=0.3"]
    whole = [tmp_path / "whole" / str(i) for i in range(2)]
    cfgs = [
        config(tmp_path, folder_data, shared, own, d) for own, d in zip(members, whole, strict=True)
    ]
    train_group(cfgs, whole)

    end_epoch = fused_group.end_epoch

    def killed_after_second_epoch(group, dm, epoch, *args):
        end_epoch(group, dm, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt

    killed = [tmp_path / "killed" / str(i) for i in range(2)]
    cfgs = [
        config(tmp_path, folder_data, shared, own, d)
        for own, d in zip(members, killed, strict=True)
    ]
    with (
        mock.patch.object(fused_group, "end_epoch", killed_after_second_epoch),
        pytest.raises(SystemExit),
    ):
        train_group(cfgs, killed)
    for run in killed:
        assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    cfgs = [
        config(tmp_path, folder_data, shared, own, d)
        for own, d in zip(members, killed, strict=True)
    ]
    results = train_group(cfgs, killed)
    for i in range(2):
        assert results[i]["status"] == "finished" and "resumed_from" in results[i]
        resumed, unkilled = weights(killed[i]), weights(whole[i])
        for name, value in unkilled.items():
            torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-5)
        assert (
            results[i]["test/acc"]
            == json.loads((whole[i] / "metrics.json").read_text())["test/acc"]
        )


@pytest.mark.parametrize(
    "settings",
    [
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"lr": 0.1, "momentum": 0.0, "weight_decay": 1e-3},
    ],
)
def test_one_step_for_same_settings_sgd_members_equals_each_ones_own(settings):
    """The group's SGD step (src.fused.optim) against each member's SGD.step, over five steps
    with fresh gradients: bit for bit, momentum buffers included; a member with other settings
    (another lr, or Adam) steps by itself."""
    from src.fused import optim
    from src.fused.optim import step_all

    def members() -> list[tuple[torch.nn.Module, torch.optim.Optimizer]]:
        torch.manual_seed(0)
        nets = [
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(6, 2)) for _ in range(4)
        ]
        return [
            (nets[0], torch.optim.SGD(nets[0].parameters(), **settings)),
            (nets[1], torch.optim.SGD(nets[1].parameters(), **settings)),
            (nets[2], torch.optim.SGD(nets[2].parameters(), **{**settings, "lr": 0.01})),
            (nets[3], torch.optim.Adam(nets[3].parameters(), lr=0.01)),
        ]

    alone, together = members(), members()
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        for pairs in (alone, together):
            for net, _ in pairs:
                for p in net.parameters():
                    p.grad = torch.randn(p.shape, generator=gen)
            gen.manual_seed(step)
        for _, optimizer in alone:
            optimizer.step()
        optimizers = [optimizer for _, optimizer in together]
        with mock.patch("src.fused.optim.step_sgd", wraps=optim.step_sgd) as joint:
            step_all(optimizers, [step == 0] * len(together))
        # After the first step (each alone), the two with equal settings step as one.
        stepped = [call.args[0] for call in joint.call_args_list]
        assert stepped == ([] if step == 0 else [optimizers[:2]])
    for (net, optimizer), (fused_net, fused_optimizer) in zip(alone, together, strict=True):
        for p, q in zip(net.parameters(), fused_net.parameters(), strict=True):
            assert torch.equal(p, q)
        state, fused_state = optimizer.state_dict()["state"], fused_optimizer.state_dict()["state"]
        assert state.keys() == fused_state.keys()
        for key in state:
            for name, value in state[key].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(fused_state[key][name]))


@pytest.mark.parametrize(
    "settings",
    [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, {}],
)
def test_the_stacked_step_of_sgd_members_with_their_own_lr_equals_each_ones_own(settings):
    """A sweep's group (plain SGD, own learning rates, changed mid-run as a schedule does)
    steps the fused net's stacked weights in one update: after six steps with fresh gradients
    every member's weights and momentum buffer equal its own SGD.step's to float32 rounding (the
    stacked update multiplies by a per-member lr tensor, SGD by a scalar: one rounding apart)."""
    from src.fused import optim
    from src.fused.net import FusedConvNet
    from src.models import ConvNet

    def members() -> tuple[list[ConvNet], list[torch.optim.Optimizer]]:
        torch.manual_seed(0)
        nets = [ConvNet(channels=[4], hidden=[8], image_size=8) for _ in range(3)]
        lrs = [0.1, 0.03, 0.1]
        return nets, [
            torch.optim.SGD(n.parameters(), lr=lr, **settings)
            for n, lr in zip(nets, lrs, strict=True)
        ]

    (nets, alone), (fused_nets, together) = members(), members()
    net = FusedConvNet(fused_nets)
    group_step = optim.GroupStep(net.shared, together)
    for step in range(6):
        gen = torch.Generator().manual_seed(step)
        for net_ in nets:
            for p in net_.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
        gen.manual_seed(step)
        net.zero_grad()
        for net_ in fused_nets:
            for p in net_.parameters():
                p.grad += torch.randn(p.shape, generator=gen)  # the stacked gradient's view
        if step == 3:  # a schedule lowers one member's rate
            for optimizer in (alone[1], together[1]):
                optimizer.param_groups[0]["lr"] = 0.01
        for optimizer in alone:
            optimizer.step()
        with mock.patch.object(group_step, "_step", wraps=group_step._step) as stacked:
            group_step([step == 0] * 3)
        assert stacked.called == (step > 0)  # the first steps are each optimizer's own
    for net_, fused_net, optimizer, fused_optimizer in zip(
        nets, fused_nets, alone, together, strict=True
    ):
        for p, q in zip(net_.parameters(), fused_net.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
            if settings.get("momentum"):
                torch.testing.assert_close(
                    fused_optimizer.state[q]["momentum_buffer"],
                    optimizer.state[p]["momentum_buffer"],
                    rtol=1e-6,
                    atol=1e-7,
                )
