"""The launcher's side of fused sweeps: which jobs it groups, the line per group, a group in one
worker process with a folder per member, a crashed group, a relaunch.

src.fused (the fused model, train_group) is not part of these tests: where a group must train,
a stand-in with the same interface trains its members one after another with src.train, so
these tests check what the launcher does with any train_group.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from omegaconf import open_dict

from hydra_plugins.cifar10_lab_launcher import fusion
from hydra_plugins.cifar10_lab_launcher.parallel_launcher import Job, ParallelLauncher
from src.fused import fusion_key, once_per_epoch, why_alone
from tests.conftest import compose_config, run_cli
from tests.test_sweeps import summary, sweep_args

FUSABLE = ("seed", "optimizer.", "scheduler.", "model.label_smoothing")

# Installed as sitecustomize (PYTHONPATH), so the launcher and its workers find `src.fused`.
STAND_IN = textwrap.dedent(
    """
    import json, os, signal, sys, types

    FUSABLE = {fusable!r}

    def fusion_key(cfg):
        from hydra_plugins.cifar10_lab_launcher.fusion import flat, fusable
        kept = {{k: v for k, v in flat(cfg).items() if not fusable(k, FUSABLE)}}
        return json.dumps(kept, sort_keys=True, default=str)

    def why_alone(cfg):
        return None

    def train_group(cfgs, out_dirs):
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write
        from src.training import train
        results = []
        for cfg, out in zip(cfgs, out_dirs):
            if os.environ.get("STAND_IN_CRASH") == out.name:
                os.kill(os.getpid(), signal.SIGKILL)
            runtime = HydraConfig.instance().cfg.hydra.runtime
            with read_write(runtime), open_dict(runtime):
                runtime.output_dir = str(out)
            print(f"member {{out.name}} in pid {{os.getpid()}}", flush=True)
            results.append(train(cfg))
        return results

    module = types.ModuleType("src.fused")
    module.FUSABLE, module.fusion_key, module.train_group = FUSABLE, fusion_key, train_group
    module.why_alone = why_alone
    sys.modules["src.fused"] = module
    """
).format(fusable=FUSABLE)


def test_seeds_and_learning_rates_fuse_widths_and_batch_sizes_do_not(tmp_path):
    jobs = {
        "seed=1,lr=0.01": ["seed=1", "optimizer.lr=0.01"],
        "seed=2,lr=0.05": ["seed=2", "optimizer.lr=0.05", "model.label_smoothing=0.1"],
        "c1=12": ["model.c1=12"],
        "batch_size=16": ["data.batch_size=16"],
        "seed=3": ["seed=3", "optimizer.momentum=0.5"],
        "seed=4,compile": ["seed=4", "model.compile=true"],
    }
    tasks = []
    for i, overrides in enumerate(jobs.values()):
        cfg = compose_config("train", overrides, tmp_path / f"run{i}")
        with open_dict(cfg):
            del cfg["hydra"]
        tasks.append(cfg)
    keys = [fusion_key(cfg) for cfg in tasks]
    groups = fusion.plan(keys, max_fused=16)
    assert groups == [[0, 1, 4], [2], [3], [5]]
    flats, why = [fusion.flat(c) for c in tasks], [why_alone(c) for c in tasks]
    lines = fusion.describe(groups, list(jobs), flats, 16, FUSABLE, why_alone=why)
    assert lines[0] == "group 1/4: fused 3 jobs (seed=1,lr=0.01, seed=2,lr=0.05, seed=3)"
    assert lines[1].startswith("group 2/4: c1=12 alone; apart from the others by model.c1")
    assert lines[2].startswith("group 3/4: batch_size=16 alone; apart from the others by data.b")
    assert "data.batch_size" in lines[2]
    assert lines[3] == "group 4/4: seed=4,compile alone: never fused (model.compile)"
    # max_fused caps a group: the same key's jobs split into near-equal groups.
    assert fusion.plan(["a"] * 5 + ["b"], max_fused=2) == [[0, 1], [2, 3], [4], [5]]
    capped = fusion.describe([[0, 1], [2]], ["s1", "s2", "s3"], [{}, {}, {}], 2, FUSABLE)
    assert capped[1] == "group 2/2: s3 alone; apart from the others by hydra.launcher.max_fused=2"
    with pytest.raises(ValueError, match="max_fused must be at least 1"):
        fusion.plan(["a"], max_fused=0)


def test_fusing_never_leaves_a_slot_idle():
    """16 same-shape jobs on 2 cores: two groups of 8; 2 jobs on 2 cores run side by side."""
    assert fusion.spread([list(range(16))], 2) == [list(range(8)), list(range(8, 16))]
    assert fusion.spread([[0, 1]], 2) == [[0], [1]]
    assert fusion.spread([[0, 1, 2, 3], [4]], 4) == [[0], [1], [2, 3], [4]]
    assert fusion.spread([[0], [1]], 4) == [[0], [1]]  # nothing left to split
    assert fusion.spread([], 2) == []
    # Why a group stands apart: the cap, or the slots, and never a DDP job's missing config.
    groups = fusion.spread(fusion.plan(["k"] * 20 + [None], max_fused=16), 4)
    assert [len(g) for g in groups] == [5, 5, 10, 1]
    flats = [{}] * 20 + [None]
    lines = fusion.describe(groups, [f"s{i}" for i in range(21)], flats, 16, FUSABLE)
    assert lines[1].endswith("apart from the others to keep all 4 slots busy")
    capped = fusion.describe(fusion.plan(["k"] * 20, 16), [f"s{i}" for i in range(20)], flats, 16)
    assert capped[1].endswith("apart from the others by hydra.launcher.max_fused=16")
    assert not once_per_epoch(1) and not once_per_epoch(0.5)  # validation inside epochs
    assert once_per_epoch(None) and once_per_epoch(1.0)
    lines = fusion.describe([[0, 1], [2, 3]], ["s0", "s1", "s2", "s3"], [{}] * 4, 16, FUSABLE)
    assert (
        lines[1]
        == "group 2/2: fused 2 jobs (s2, s3); apart from the others to keep all 2 slots busy"
    )


@pytest.mark.parametrize("experiment", ["seed000_tutorial", "seed004_lenet3", "seed003_bn6"])
def test_a_studys_seeds_and_learning_rates_fuse(experiment, tmp_path):
    tasks = []
    for i, own in enumerate([["seed=1"], ["seed=2", "optimizer.lr=0.01"]]):
        cfg = compose_config("train", [f"experiment={experiment}", *own], tmp_path / str(i))
        with open_dict(cfg):
            del cfg["hydra"]
        tasks.append(cfg)
    assert [why_alone(cfg) for cfg in tasks] == [None, None]
    assert fusion_key(tasks[0]) == fusion_key(tasks[1])


def test_fuse_off_runs_every_job_alone():
    jobs = [Job(i, [f"seed={i}"], f"seed={i}", Path(f"seed={i}"), {}) for i in range(3)]
    units = ParallelLauncher(fuse="off")._units(jobs, gpus=False)
    assert [[j.name for j in u.jobs] for u in units] == [["seed=0"], ["seed=1"], ["seed=2"]]
    with pytest.raises(Exception, match="hydra.launcher.fuse=maybe is not one of auto, off"):
        ParallelLauncher(fuse="maybe")._check_fuse()


def stand_in_env(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "stand_in"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(STAND_IN)
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.mark.slow
def test_a_fused_sweep_groups_runs_each_group_in_a_worker_and_survives_a_crash(
    folder_data, tmp_path
):
    args = sweep_args(
        tmp_path,
        folder_data,
        "model.c1=2,4",
        "seed=1,2",
        "hydra.launcher.cpu_jobs=1",
        "hydra.launcher.fuse=auto",
    )
    env = stand_in_env(tmp_path)
    # The second group's worker dies (SIGKILL) after its first member finished.
    result = run_cli("src.train", *args, env={**env, "STAND_IN_CRASH": "c1=4,seed=2"})
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in result.stderr, output[-3000:]
    assert "group 1/2: fused 2 jobs (c1=2,seed=1, c1=2,seed=2)" in output
    assert (
        "group 2/2: fused 2 jobs (c1=4,seed=1, c1=4,seed=2); apart from the others by model.c1"
        in output
    )
    assert "1 of 4 sweep jobs did not finish (c1=4,seed=2)" in result.stderr
    sweep = tmp_path / "sweep"
    jobs = summary(sweep)["jobs"]
    assert {n: j["status"] for n, j in jobs.items()} == {
        "c1=2,seed=1": "finished",
        "c1=2,seed=2": "finished",
        "c1=4,seed=1": "finished",  # finished before its group's process died: kept
        "c1=4,seed=2": "failed",
    }
    assert jobs["c1=4,seed=2"]["error"] == "killed by SIGKILL (out of memory?)"
    # One worker served both groups; every member has a folder of its own.
    assert len({j["pid"] for j in jobs.values()}) == 1
    for name in ("c1=2,seed=1", "c1=2,seed=2", "c1=4,seed=1"):
        run = sweep / name
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["seed"] == int(name[-1])
        assert jobs[name]["return_value"] == metrics["val/acc_best"]
        assert (run / ".hydra" / "config.yaml").exists() and (run / "checkpoints").is_dir()
        assert f"member {name} in pid {jobs[name]['pid']}" in (run / "console.log").read_text()

    # The relaunch runs only the job that did not finish, in a new worker.
    result = run_cli("src.train", *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    again = summary(sweep)["jobs"]
    assert {n: j["status"] for n, j in again.items()} == dict.fromkeys(jobs, "finished")
    assert [n for n, j in again.items() if not j.get("skipped")] == ["c1=4,seed=2"]
    assert again["c1=4,seed=2"]["pid"] != jobs["c1=4,seed=2"]["pid"]


@pytest.mark.slow
def test_a_failed_job_retires_its_worker_and_the_next_job_gets_a_new_one(folder_data, tmp_path):
    args = sweep_args(
        tmp_path,
        folder_data,
        "model=convnet",
        "model.kernel_size=7",
        "model.depth=6,2,3",
        "model.base_width=4",
        "hydra.launcher.cpu_jobs=1",
    )
    result = run_cli("src.train", *args)
    assert result.returncode == 1 and "1 of 3 sweep jobs did not finish (depth=6)" in result.stderr
    jobs = summary(tmp_path / "sweep")["jobs"]
    assert [jobs[n]["status"] for n in ("depth=6", "depth=2", "depth=3")] == [
        "failed",
        "finished",
        "finished",
    ]
    # depth=6 failed in the first worker; a new one ran the two others, one after the other.
    assert jobs["depth=6"]["pid"] != jobs["depth=2"]["pid"] == jobs["depth=3"]["pid"]


def test_a_real_fused_sweep_trains_each_member_into_its_own_folder(folder_data, tmp_path):
    one_slot = "hydra.launcher.cpu_jobs=1"  # else each job gets a core of its own, unfused
    args = sweep_args(tmp_path, folder_data, "seed=1,2", "hydra.launcher.fuse=auto", one_slot)
    result = run_cli("src.train", *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "group 1/1: fused 2 jobs (seed=1, seed=2)" in output
    jobs = summary(tmp_path / "sweep")["jobs"]
    assert {n: j["status"] for n, j in jobs.items()} == {"seed=1": "finished", "seed=2": "finished"}
    records = [json.loads((tmp_path / "sweep" / n / "metrics.json").read_text()) for n in jobs]
    assert all(r["status"] == "finished" and r.get("fused_members") for r in records)
    assert records[0]["test/acc_per_class"] != records[1]["test/acc_per_class"] or (
        records[0]["test/loss"] != records[1]["test/loss"]
    )  # two seeds, two different runs
