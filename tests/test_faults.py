"""Faults: killed and stopped runs resume to the same result, diverged runs stop, bad input and
unwritable output get one clear line.

The kill tests run real `python -m src.train` processes; the bad-input tests run the real entry
points in this process with a command line (argv), which checks the same output and exit status
without paying a fresh interpreter's start-up for each case.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import torch

import src.eval
import src.train
from src.errors import OutputError, TrainingDiverged
from src.recovery import AtomicCheckpointIO
from src.training import train
from tests.conftest import (
    CONF,
    compose_config,
    make_folder_tree,
    run_cli,
    run_entry,
    tiny_overrides,
)
from tests.signals import exit_status, signal_at

RESULT_KEYS = ("val/acc_best", "test/acc", "test/loss", "test/acc_per_class", "epochs")


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def saved_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory) -> tuple[list[str], Path]:
    """Overrides for 3 epochs of 14 steps (augmented, 3 validation batches) and an uninterrupted
    reference run of them."""
    tmp = tmp_path_factory.mktemp("resume")
    data = make_folder_tree(tmp / "data")
    overrides = [
        *tiny_overrides(tmp, data),
        "trainer.max_epochs=3",
        "optimizer.lr=0.01",
        "data.augment=flip_crop",
        "data.eval_batch_size=4",
        "callbacks.resume_checkpoint.every_n_steps=4",
    ]
    reference = tmp / "reference"
    train(compose_config("train", overrides, reference))
    return overrides, reference


def assert_same_result(run: Path, reference: Path) -> None:
    resumed, expected = metrics(run), metrics(reference)
    assert resumed["status"] == "finished"
    assert {k: resumed[k] for k in RESULT_KEYS} == {k: expected[k] for k in RESULT_KEYS}
    final, uninterrupted = weights(run), weights(reference)
    assert all(torch.equal(final[name], uninterrupted[name]) for name in uninterrupted)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(resume_setup, tmp_path):
    overrides, reference = resume_setup
    run = [*overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    killed = run_cli("src.train", *run, signal_at(18))  # epoch 1, batch 5 of 14
    assert killed.returncode == -signal.SIGKILL
    assert metrics(tmp_path / "run")["status"] == "running"  # it had no chance to say more
    assert saved_step(tmp_path / "run") == 16  # the last save before the kill: 2 steps are lost

    resumed = run_cli("src.train", *run, "resume=true")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert metrics(tmp_path / "run")["resumed_from"].endswith("checkpoints/last.ckpt")
    assert_same_result(tmp_path / "run", reference)


def test_sigterm_saves_a_checkpoint_and_resumes_to_the_same_result(resume_setup, tmp_path):
    overrides, reference = resume_setup
    # No periodic saves: every mid-epoch checkpoint here is SIGTERM's.
    no_periodic = ["callbacks.resume_checkpoint.every_n_steps=null"]
    no_periodic.append("callbacks.resume_checkpoint.every_minutes=null")
    run = [*overrides, *no_periodic, f"hydra.run.dir={tmp_path / 'run'}"]

    # Inside validation: the stop waits for the validation pass, then saves.
    stopped = run_cli("src.train", *run, signal_at(14, "SIGTERM", during_validation=True))
    assert stopped.returncode == 128 + signal.SIGTERM
    record = metrics(tmp_path / "run")
    assert record["status"] == "interrupted" and record["error"] == "interrupted by SIGTERM"
    assert "resume=true" in record["resume_command"]
    assert saved_step(tmp_path / "run") == 14

    # Inside a training epoch, after a resume: saves after the current batch. (In this process
    # from here: the command line's path is the one above.)
    resume = [*overrides, *no_periodic, "resume=true"]
    stop = compose_config("train", [*resume, signal_at(20, "SIGTERM")], tmp_path / "run")
    assert exit_status(lambda: train(stop), "SIGTERM") == 128 + signal.SIGTERM
    assert saved_step(tmp_path / "run") == 20

    train(compose_config("train", resume, tmp_path / "run"))
    assert_same_result(tmp_path / "run", reference)


def test_ctrl_c_records_an_interrupted_run(resume_setup, tmp_path):
    overrides, _ = resume_setup
    stop = compose_config("train", [*overrides, signal_at(5, "SIGINT")], tmp_path)
    assert exit_status(lambda: train(stop), "SIGINT") == 128 + signal.SIGINT
    record = metrics(tmp_path)
    assert record["status"] == "interrupted" and record["error"] == "interrupted by Ctrl-C"
    assert record["resume_command"].endswith(f"resume=true hydra.run.dir={tmp_path}")


def test_a_refused_resume_leaves_the_folder_as_it_found_it(folder_data, tmp_path, capsys):
    new, other = tmp_path / "new", tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    for folder in (new, other, other):  # twice: the refusal must not make the next try train
        argv = [*tiny_overrides(tmp_path, folder_data), "resume=true", f"hydra.run.dir={folder}"]
        status, output = run_entry(src.train.main, *argv, capsys=capsys)
        assert_one_clear_line(status, output, "hydra.run.dir=<run folder>")
    assert not new.exists()
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_divergence_stops_at_once_naming_the_learning_rate(folder_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*tiny_overrides(tmp_path, folder_data), "optimizer.lr=1e5", f"hydra.run.dir={run}"]
    status, output = run_entry(src.train.main, *argv, capsys=capsys)
    assert status == 3
    assert "training diverged" in output and "optimizer.lr=100000" in output
    assert "Traceback" not in output
    record = metrics(run)
    assert record["status"] == "diverged" and record["lr"] == 1e5
    step = int(re.search(r"by epoch 0, step (\d+),", record["error"]).group(1))
    assert step < 14, "stopped at once, not at the end of the epoch"
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_divergence_checked_seldom_still_never_reaches_a_checkpoint(folder_data, tmp_path):
    """As on a GPU, where the loss is read every few steps: the check before saving catches it."""
    overrides = [
        *tiny_overrides(tmp_path, folder_data),
        "optimizer.lr=1e5",
        "callbacks.stop_on_divergence.check_every_n_batches=1000",
    ]
    with pytest.raises(TrainingDiverged, match="by epoch 0, step 14"):
        train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics(tmp_path / "run")["status"] == "diverged"
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_file(
    folder_data, tmp_path
):
    overrides = tiny_overrides(tmp_path, folder_data)
    compose_config("train", overrides, tmp_path / "warm")  # resolvers for the cache warm-up
    from src.data import CIFAR10DataModule

    CIFAR10DataModule("folder", str(folder_data), str(tmp_path / "cache")).prepare_data()

    def small_disk() -> None:  # files may not grow past 200 kB: the checkpoint (500 kB) fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    run = tmp_path / "run"
    result = run_cli(
        "src.train",
        *overrides,
        "callbacks.resume_checkpoint.every_n_steps=4",
        f"hydra.run.dir={run}",
        preexec_fn=small_disk,
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "cannot write" in output and "last.ckpt (File too large)" in output
    assert "free some space" in output and "Traceback" not in output
    assert metrics(run)["status"] == "failed" and "cannot write" in metrics(run)["error"]
    assert list((run / "checkpoints").iterdir()) == []  # no partial checkpoint, no temporary


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    full = OSError(errno.ENOSPC, "No space left on device")  # when the data reaches the disk
    with mock.patch("os.fsync", side_effect=full), pytest.raises(OutputError, match="free some"):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# -- bad input: one line, exit status 2, no traceback ---------------------------------------------


def assert_one_clear_line(status: int, output: str, message: str) -> None:
    assert status == 2, output
    lines = output.strip().splitlines()
    assert [line for line in lines if "[ERROR]" in line] == lines[-1:], output  # one, at the end
    assert message in lines[-1], output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=resnet", "unknown model 'resnet': choose one of "),
        ("optimizer=adamw", "unknown optimizer 'adamw': choose one of adam, sgd"),
        ("experiment=seed999", "experiment"),
        ("optimizer.lrr=0.1", "Could not override 'optimizer.lrr'"),
        ("optimizer.lr=0", "optimizer.lr must be a positive number, got 0"),
        ("data.batch_size=-8", "data.batch_size must be a positive integer, got -8"),
        ("trainer.max_epochs=-1", "trainer.max_epochs must be a positive integer, got -1"),
        ("data.val_size=120", "data.val_size=120 leaves no training images"),
    ],
)
def test_bad_settings(override, message, folder_data, tmp_path, capsys):
    run = tmp_path / "runs" / "date" / "r"
    argv = [*tiny_overrides(tmp_path, folder_data), override, f"hydra.run.dir={run}"]
    assert_one_clear_line(*run_entry(src.train.main, *argv, capsys=capsys), message)
    assert not (tmp_path / "runs").exists(), "no run folder left behind, nor the folder above it"


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("label_smoothing=0.1", "label_smoothing is now model.label_smoothing"),
        ("channels_last=true", "channels_last is now model.channels_last"),
        ("compile=true", "compile is now model.compile"),
    ],
)
def test_a_moved_key_is_refused_in_one_line_naming_its_new_place(override, line, tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    status, output = run_entry(src.train.main, override, f"hydra.run.dir={run}", capsys=capsys)
    new = line.split(" is now ")[1]
    assert (status, output) == (2, f"[ERROR] {line}: write {new}=<value>\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override", ["trainer.accelerator=gpu", "trainer=gpu"])
def test_a_gpu_asked_for_on_a_machine_without_one(override, folder_data, tmp_path, capsys):
    overrides = [o for o in tiny_overrides(tmp_path, folder_data) if "accelerator" not in o]
    argv = [*overrides, override, f"hydra.run.dir={tmp_path / 'r'}"]
    with mock.patch("torch.cuda.device_count", return_value=0):
        status, output = run_entry(src.train.main, *argv, capsys=capsys)
    assert_one_clear_line(status, output, "no GPU was found: use trainer.accelerator=cpu")
    assert "layers" not in output, "before the layer table"
    assert not (tmp_path / "r").exists()


def break_data(case: str, root: Path) -> None:
    if case == "no images":
        for image in (root / "train" / "dog").iterdir():
            image.unlink()
    elif case == "unreadable image":
        (root / "train" / "dog" / "0003.png").write_bytes(b"not a png at all")
    elif case == "classes differ":
        (root / "test" / "dog").rename(root / "test" / "wolf")
    elif case == "no train folder":
        (root / "train").rename(root / "training")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing folder", "does not exist: data.root must hold train/<class>/*"),
        ("no train folder", "no train/ folder in"),
        ("no images", "no images in"),
        ("unreadable image", "cannot read image"),
        ("classes differ", "train and test classes differ"),
    ],
)
def test_bad_image_folders(case, message, folder_data, tmp_path, capsys):
    root = tmp_path / "missing" if case == "missing folder" else folder_data
    break_data(case, root)
    argv = [*tiny_overrides(tmp_path, root), f"hydra.run.dir={tmp_path / 'r'}"]
    assert_one_clear_line(*run_entry(src.train.main, *argv, capsys=capsys), message)
    assert not (tmp_path / "r").exists()
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_dir()]  # nothing cached


@pytest.mark.parametrize("case", ["truncated batch", "tampered archive"])
def test_bad_official_files(case, official_data, tmp_path, capsys):
    if case == "truncated batch":
        batch = official_data / "cifar-10-batches-py" / "data_batch_3"
        batch.write_bytes(batch.read_bytes()[:-100])
    else:  # a download that stopped halfway: the archive is there, the folder is not
        for file in (official_data / "cifar-10-batches-py").iterdir():
            file.unlink()
        (official_data / "cifar-10-batches-py").rmdir()
        (official_data / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + b"0" * 1000)
    argv = [*tiny_overrides(tmp_path, official_data, "torchvision"), f"hydra.run.dir={tmp_path}/r"]
    assert_one_clear_line(*run_entry(src.train.main, *argv, capsys=capsys), "integrity check")


def test_offline_download(tmp_path, capsys, monkeypatch):
    import socket

    def unreachable(*args, **kwargs):
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    argv = [
        *tiny_overrides(tmp_path, tmp_path / "none", "torchvision"),
        f"hydra.run.dir={tmp_path}/r",
    ]
    status, output = run_entry(src.train.main, *argv, capsys=capsys)
    assert_one_clear_line(status, output, "could not download CIFAR-10")
    assert "data.source=folder" in output


def test_unwritable_run_folder(folder_data, tmp_path, capsys):
    (tmp_path / "file").write_text("a file where the run folder should go")
    argv = [*tiny_overrides(tmp_path, folder_data), f"hydra.run.dir={tmp_path / 'file' / 'run'}"]
    status, output = run_entry(src.train.main, *argv, capsys=capsys)
    assert_one_clear_line(status, output, f"cannot write {tmp_path / 'file' / 'run'}")


def test_run_folder_that_exists_but_cannot_be_written(folder_data, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    # As root, permissions do not stop a write; the immutable attribute does.
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", run]).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        argv = [*tiny_overrides(tmp_path, folder_data), f"hydra.run.dir={run}"]
        status, output = run_entry(src.train.main, *argv, capsys=capsys)
    finally:
        subprocess.run(["chattr", "-i", run], check=True)
    assert_one_clear_line(status, output, f"cannot write {run / 'train.log'} (Operation not")


@pytest.mark.parametrize("case", ["under a file", "a file"])
def test_unwritable_cache(case, folder_data, tmp_path, capsys):
    (tmp_path / "file").write_text("a file where the cache folder should go")
    cache = tmp_path / "file" / "cache" if case == "under a file" else tmp_path / "file"
    argv = [
        *tiny_overrides(tmp_path, folder_data),
        f"data.cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    status, output = run_entry(src.train.main, *argv, capsys=capsys)
    assert_one_clear_line(status, output, "cannot write the data cache")
    assert f"{tmp_path / 'file'} is a file, not a folder: set data.cache_dir" in output
    assert "free some space" not in output


@pytest.mark.parametrize("case", ["another network", "not a checkpoint", "random bytes"])
def test_eval_refuses_a_checkpoint_it_cannot_use(case, resume_setup, tmp_path, capsys):
    overrides, reference = resume_setup
    ckpt = reference / "checkpoints" / "best.ckpt"
    if case != "another network":
        ckpt = tmp_path / "best.ckpt"
        start = b"PK\x03\x04 truncated" if case == "not a checkpoint" else b""
        ckpt.write_bytes(start + os.urandom(2000))
    data = [o for o in overrides if o.startswith(("data.", "threads"))]
    argv = [
        f"ckpt_path={ckpt}",
        *data,
        "model=tutorial",
        "model.c1=12",
        f"hydra.run.dir={tmp_path}",
    ]
    message = "holds a different network" if case == "another network" else "cannot read"
    status, output = run_entry(src.eval.main, *argv, capsys=capsys)
    assert_one_clear_line(status, output, message)
    line = output.strip().splitlines()[-1].replace(str(ckpt), "<checkpoint>")
    assert "weights_only" not in line and (case == "another network" or len(line) < 200), line
    assert not any(tmp_path.glob("**/.hydra")), "no eval folder left behind"


def test_resume_with_another_network_is_refused(resume_setup, tmp_path, capsys):
    overrides, reference = resume_setup
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(
        (reference / "checkpoints/last.ckpt").read_bytes()
    )
    argv = [*overrides, "model.c1=12", "resume=true", f"hydra.run.dir={run}"]
    status, output = run_entry(src.train.main, *argv, capsys=capsys)
    assert_one_clear_line(status, output, "holds another network than this run builds")


def test_a_real_command_line_prints_one_line_and_exits_2(tmp_path):
    result = run_cli("src.train", "model=resnet", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    models = ", ".join(sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
    assert result.stderr.strip() == (
        f"[ERROR] unknown model 'resnet': choose one of {models} (the files in conf/model/)"
    )
    assert not list(tmp_path.iterdir()), "nothing written for a command that never ran"
