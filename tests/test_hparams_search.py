"""The Optuna search (hydra/sweeper=optuna_study) end to end on tiny data: the study file,
relaunches, failures, pruning, the parallel launcher, optuna-dashboard, the search-space syntax."""

from __future__ import annotations

import fcntl
import io
import json
import re
import shlex
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.errors import ConfigCompositionException
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import src.train
from hydra_plugins.cifar10_lab_sweeper.space import as_override, search_space
from hydra_plugins.cifar10_lab_sweeper.study import storage
from tests.conftest import ROOT, compose_config, run_cli, run_entry
from tests.test_sweeps import most_at_once, summary, sweep_args

# Every depth and kernel size of hparams_search=optuna fits with padding=same; a narrow net (the
# width fixed on the command line) keeps trials short; basic launcher: the trials run one after
# another in the sweeper's process (no process start per trial).
BASIC = [
    "hparams_search=optuna",
    "model.padding=same",
    "model.base_width=4",
    "hydra/launcher=basic",
]


def load(sweep_dir: Path, name: str = "convnet") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(sweep_dir, "optuna.journal"))


def check(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_search_keeps_its_study_and_a_relaunch_adds_trials(folder_data, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(tmp_path, folder_data, *BASIC, "hydra.sweeper.n_jobs=3")
    result = run_cli("src.train", *args, "hydra.sweeper.n_trials=6")
    check(result)
    study = load(sweep_dir)
    first = study.get_trials()
    assert [t.number for t in first] == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in first)
    for trial in first:  # each trial ran in its own folder, which says how it ended
        metrics = json.loads((sweep_dir / f"trial_{trial.number:04d}" / "metrics.json").read_text())
        if trial.state == TrialState.COMPLETE:
            assert metrics["status"] == "finished" and trial.value == metrics["val/acc_best"]
        else:  # a learning rate this high can diverge on 36 images: failed, and the search went on
            assert metrics["status"] in ("diverged", "failed") and trial.user_attrs["error"]
    best = max((t for t in first if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_trial"] == best.number and results["best_value"] == best.value
    # The printed command reruns the best trial: the search's settings plus its values.
    command = results["command"]
    assert command in result.stdout + result.stderr
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "src.train"]
    cfg = compose_config("train", words[3:], tmp_path / "rerun")
    assert cfg.optimizer.lr == best.params["optimizer.lr"]
    assert (cfg.model.depth, cfg.model.kernel_size) == (
        best.params["model.depth"],
        best.params["model.kernel_size"],
    )
    assert cfg.model.base_width == 4 and "model.base_width" not in best.params
    assert cfg.trainer.max_epochs == 1 and cfg.optuna_trial is None
    folders = {
        n: (sweep_dir / f"trial_{n:04d}" / "metrics.json").stat().st_mtime_ns for n in range(6)
    }

    # As a search killed while trial 6 ran leaves its study:
    load(sweep_dir).ask({"optimizer.lr": FloatDistribution(0.001, 0.3, log=True)})

    # A relaunch on the same folder with a larger budget runs only the new trials; the one left
    # running is failed, and does not count towards n_trials.
    check(run_cli("src.train", *args, "hydra.sweeper.n_trials=7"))
    trials = load(sweep_dir).get_trials()
    assert [t.number for t in trials] == list(range(8))
    assert trials[6].state == TrialState.FAIL and trials[6].user_attrs["interrupted"]
    del trials[6]
    for old, now in zip(first, trials[:6], strict=True):
        assert (now.state, now.params, now.values, now.datetime_complete) == (
            old.state,
            old.params,
            old.values,
            old.datetime_complete,
        )
    assert {
        n: (sweep_dir / f"trial_{n:04d}" / "metrics.json").stat().st_mtime_ns for n in range(6)
    } == folders
    new = [t.params for t in trials[6:]]
    assert all(p not in [t.params for t in first] for p in new)  # not the first launch's points
    assert (sweep_dir / "trial_0007" / "metrics.json").exists()

    # optuna-dashboard opens the file and lists every trial.
    dashboard = optuna_dashboard_get(sweep_dir / "optuna.journal", "/api/studies/0")
    assert len(dashboard["trials"]) == 8


def optuna_dashboard_get(journal: Path, path: str) -> dict:
    """GET `path` from optuna-dashboard's web app on `journal`, as `optuna-dashboard <file>`
    serves it (the same storage detection, no port needed)."""
    from optuna_dashboard import wsgi
    from optuna_dashboard._storage_url import get_storage

    app = wsgi(get_storage(str(journal)))
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    body = b"".join(app(environ, lambda s, headers, *exc: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


@pytest.mark.slow
def test_trials_run_in_parallel_and_a_failed_one_does_not_stop_the_search(folder_data, tmp_path):
    # The grid makes the two trials depth 2 (fits) and depth 6 (kernel 7 does not fit: fails).
    args = sweep_args(
        tmp_path,
        folder_data,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "~hydra.sweeper.sampler",
        "+hydra.sweeper.sampler={_target_:optuna.samplers.GridSampler,"
        "search_space:{model.depth:[2,6]},seed:0}",
        "model.depth=choice(2,6)",
        "model.kernel_size=7",
        "model.base_width=4",
        "optimizer.lr=0.05",
    )
    result = run_cli("src.train", *args)
    check(result)
    jobs = summary(tmp_path / "sweep")["jobs"]
    assert sorted(jobs) == ["trial_0000", "trial_0001"]
    assert most_at_once(list(jobs.values())) == 2  # through the parallel launcher, side by side
    trials = {t.params["model.depth"]: t for t in load(tmp_path / "sweep").get_trials()}
    assert trials[2].state == TrialState.COMPLETE
    assert trials[6].state == TrialState.FAIL
    assert "conv6 (kernel 7" in trials[6].user_attrs["error"]
    assert jobs[f"trial_{trials[2].number:04d}"]["return_value"] == trials[2].value
    assert "best: trial" in result.stdout + result.stderr


class PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report: which trial is pruned is known."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number % 2 == 1


def test_a_pruned_trial_stops_early_and_is_recorded_as_pruned(folder_data, tmp_path):
    args = sweep_args(
        tmp_path,
        folder_data,
        *BASIC,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner={_target_:tests.test_hparams_search.PruneOddTrials}",
        "optimizer.lr=0.01",
        "trainer.max_epochs=2",
    )
    check(run_cli("src.train", *args))
    kept, pruned = load(tmp_path / "sweep").get_trials()
    assert kept.state == TrialState.COMPLETE and list(kept.intermediate_values) == [1, 2]
    assert pruned.state == TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    metrics = json.loads((tmp_path / "sweep" / "trial_0001" / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and metrics["epochs"] == 1
    assert metrics["val/acc_best"] == pytest.approx(pruned.intermediate_values[1], abs=1e-3)
    assert "test/acc" not in metrics  # a pruned trial is not tested
    # The sweep report counts it as pruned, and the trial number is no swept setting.
    report = run_cli("src.report", str(tmp_path / "sweep"))
    check(report)
    counts = re.search(r"2 jobs: 1 finished, 1 pruned\. Swept: (.*)\.", report.stdout)
    assert counts and "optuna_trial" not in counts[1], report.stdout[-2000:]


def test_pruner_presets_build(tmp_path):
    for name, kind in (("median", "MedianPruner"), ("hyperband", "HyperbandPruner")):
        cfg = compose_config(
            "train", ["hparams_search=optuna", f"hydra/sweeper/pruner={name}"], tmp_path
        )
        from hydra_plugins.cifar10_lab_sweeper.study import pruner

        assert type(pruner(cfg.hydra.sweeper.pruner)).__name__ == kind
    cfg = compose_config("train", ["hparams_search=optuna"], tmp_path)
    assert cfg.hydra.sweeper.pruner is None  # off by default


def test_the_tutorial_search_space_composes_at_its_extremes(tmp_path):
    from hydra.utils import instantiate

    from src.models.convnet import count_parameters

    cfg = compose_config("train", ["hparams_search=tutorial"], tmp_path)
    space, fixed = search_space(cfg.hydra.sweeper.params, ["hparams_search=tutorial"])
    assert set(space) == {"optimizer.lr", "model.c1", "model.c2", "model.kernel_size"}
    for c1, c2, kernel in ((6, 16, 3), (128, 64, 5)):
        overrides = [*fixed, f"model.c1={c1}", f"model.c2={c2}", f"model.kernel_size={kernel}"]
        cfg = compose_config("train", overrides, tmp_path)
        assert count_parameters(instantiate(cfg.model.net, num_classes=10)) > 0


def test_search_space_syntax():
    space, fixed = search_space(
        {
            "optimizer.lr": "tag(log, interval(0.001, 0.3))",
            "model.depth": "range(2, 7, 2)",
            "model.base_width": "choice(16, 32)",
            "model.hidden": "choice([64], [128, 64])",
            "model.padding": "same",
        },
        ["model.base_width=8", "seed=1,2", "+tag=x"],
    )
    assert space == {
        "optimizer.lr": FloatDistribution(0.001, 0.3, log=True),
        "model.depth": IntDistribution(2, 6, step=2),
        "model.hidden": CategoricalDistribution(["[64]", "[128, 64]"]),
        "seed": CategoricalDistribution([1, 2]),
    }
    assert fixed == ["model.padding=same", "model.base_width=8", "+tag=x"]  # the command line wins
    assert as_override("optimizer.lr", 0.1 + 0.2) == "optimizer.lr=0.30000000000000004"
    assert as_override("model.hidden", "[128, 64]") == "model.hidden=[128, 64]"
    assert as_override("model.batch_norm", True) == "model.batch_norm=true"


@pytest.mark.parametrize(
    "value, message",
    [
        ("tag(log, choice(1, 2))", "tag(log, ...) needs an interval or a range"),
        ("tag(log, interval(0, 1))", "cannot search optimizer.lr=tag(log, interval(0, 1))"),
        ("interval(0.3, 0.1)", "cannot search optimizer.lr=interval(0.3, 0.1)"),
    ],
)
def test_a_search_space_optuna_cannot_sample_is_one_line(value, message):
    with pytest.raises(ConfigCompositionException, match=re.escape(message)):
        search_space({"optimizer.lr": value}, [])


@pytest.mark.slow
def test_bad_search_settings_fail_in_one_line_before_any_trial(folder_data, tmp_path):
    result = run_cli(
        "src.train", *sweep_args(tmp_path, folder_data, *BASIC, "optimizer.lr=interval(0.3,0.1)")
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("[ERROR] cannot search optimizer.lr=interval(0.3,0.1): ")
    )
    assert not (tmp_path / "sweep").exists()
    result = run_cli(
        "src.train",
        *sweep_args(tmp_path, folder_data, *BASIC, "hydra.sweeper.pruner={_target_:x.Nope}"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("[ERROR] hydra.sweeper.pruner cannot be built: ")
    )
    # A second launch on a folder whose search is running would fail the first's trials.
    journal = tmp_path / "busy" / "optuna.journal"
    journal.parent.mkdir()
    with open(journal, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run_cli("src.train", *sweep_args(tmp_path, folder_data, *BASIC, folder="busy"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"[ERROR] another search is running on {journal.parent}: wait for it to end, or give "
        "this one its own hydra.sweep.dir"
    )
    assert sorted(p.name for p in journal.parent.iterdir()) == ["multirun.yaml", "optuna.journal"]


def test_optuna_trial_outside_a_search_is_one_line(folder_data, tmp_path, capsys):
    status, output = run_entry(
        src.train.main,
        *sweep_args(tmp_path, folder_data)[1:],
        "optuna_trial=3",
        f"hydra.run.dir={tmp_path / 'run'}",
        capsys=capsys,
    )
    assert status == 2 and "Traceback" not in output
    assert "optuna_trial=3 is set by the Optuna search" in output


def test_the_docs_commands_compose(tmp_path):
    text = (ROOT / "docs" / "hyperparameter-search.md").read_text()
    commands = re.findall(r"^ {4}(?:\.venv/bin/)?python -m src\.train (.+)$", text, re.M)
    assert len(commands) >= 4
    for command in commands:
        words = [w for w in shlex.split(command.rstrip("\\")) if w != "-m"]
        # As the sweeper does: a sweep on the command line joins the search space, the rest
        # composes every trial's config.
        space, fixed = search_space({}, words)
        cfg = compose_config("train", fixed, tmp_path / "docs")
        space, _ = search_space(cfg.hydra.sweeper.params, words)
        assert space, command
