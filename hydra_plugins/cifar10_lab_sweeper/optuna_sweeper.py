"""OptunaSweeper: a hyperparameter search on Optuna's ask-and-tell API, kept in a study file.

Each batch: ask the study for `n_jobs` trials, run them through the configured launcher (the
parallel one by default: one process per trial), tell the study how each ended. The study lives
in an Optuna journal file in the sweep folder, so a relaunch on the same `hydra.sweep.dir`
continues it, optuna-dashboard shows it, and each trial's job can report its validation accuracy
to it after every epoch (src/callbacks.py, OptunaPruning) and be pruned.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import math
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, ConfigCompositionException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..cifar10_lab_launcher.child import describe
from ..cifar10_lab_launcher.summary import read_metrics
from . import study as studies
from .space import as_override, search_space

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# The config key that tells a job which trial it is (conf/train.yaml).
TRIAL_KEY = "optuna_trial"


class SearchFailed(CompactHydraException):
    """The search cannot start or no trial finished; Hydra prints this one line."""


class TrialExited(Exception):
    """A trial's task exited with an error status (see trial_task)."""


def trial_task(task: TaskFunction) -> TaskFunction:
    """`task`, failing its trial instead of exiting when it exits with an error status.

    src.train reports a user error or a diverged run in one line and exits (status 2 or 3). With
    Hydra's basic launcher the trials run in the sweeper's own process, so that exit would end
    the whole search. A stop by a signal (Ctrl-C, SIGTERM: status 128 and up) still ends it.
    """

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except SystemExit as err:
            if isinstance(err.code, int) and 0 < err.code < 128:
                raise TrialExited(f"exited with status {err.code}") from err
            raise

    return run


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        direction: str = "maximize",
        storage: str = "optuna.journal",
        n_trials: int = 20,
        n_jobs: int = 2,
        sampler: Any = None,
        pruner: Any = None,
        params: Any = None,
    ) -> None:
        super().__init__()
        self.study_name, self.direction, self.storage = study_name, direction, storage
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        # Configs, instantiated here (the sampler's seed depends on the study so far).
        self.sampler, self.pruner = sampler, pruner
        self.params = OmegaConf.to_container(params) if params else {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.grid_done = False

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=trial_task(task_function), config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise ConfigCompositionException(
                "nothing to search: give hydra.sweeper.params (see conf/hparams_search/) or a "
                "sweep on the command line (optimizer.lr=0.01,0.1)"
            )
        if self.n_trials < 1 or self.n_jobs < 1:
            raise ConfigCompositionException(
                f"hydra.sweeper.n_trials and n_jobs must be at least 1, got {self.n_trials} and "
                f"{self.n_jobs}"
            )
        if self.direction not in ("maximize", "minimize"):
            raise ConfigCompositionException(
                f"hydra.sweeper.direction must be maximize or minimize, got {self.direction}"
            )
        # Bad sampler or pruner settings fail here in one line, not later in every trial.
        for name, build in (
            ("pruner", lambda: studies.pruner(self.pruner)),
            ("sampler", lambda: self._sampler(0)),
        ):
            try:
                build()
            except Exception as err:
                raise ConfigCompositionException(
                    f"hydra.sweeper.{name} cannot be built: {describe(err)}"
                ) from None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        # Optuna logs every trial it is told about; the launcher already logs each job's end.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        journal = sweep_dir / self.storage
        with _one_search_at_a_time(journal):
            backend = studies.storage(sweep_dir, self.storage)
            study = optuna.create_study(
                study_name=self.study_name,
                storage=backend,
                direction=self.direction,
                load_if_exists=True,
            )
            study.sampler = self._sampler(len(study.trials)) or study.sampler
            self._fail_left_running(study, backend)
            while (done := _counted(study)) < self.n_trials and not self.grid_done:
                trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
                self._run_batch(study, trials, fixed, sweep_dir)
            self._report(study, fixed, sweep_dir, journal)

    def _sampler(self, n_trials_before: int) -> optuna.samplers.BaseSampler | None:
        """The configured sampler (None: Optuna's default); a relaunch shifts its seed by the
        trials already in the study, so it does not suggest the first launch's points again."""
        if not self.sampler:
            return None
        if self.sampler.get("seed") is None:
            return instantiate(self.sampler)
        return instantiate(self.sampler, seed=int(self.sampler.seed) + n_trials_before)

    def _fail_left_running(self, study: optuna.Study, backend: Any) -> None:
        """Trials an earlier launch left running (killed, Ctrl-C) are marked failed, not rerun:
        the sampler may suggest their point again; their folders stay as they were left."""
        from optuna.trial import TrialState

        left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for frozen in left:
            _interrupt(study, studies.trial_by_number(study, backend, frozen.number))
        if left:
            log.warning(
                "marked %d trials an earlier launch left running as failed (%s); they do not "
                "count towards n_trials",
                len(left),
                ", ".join(_folder(t.number) for t in left),
            )

    def _run_batch(
        self,
        study: optuna.Study,
        trials: list[optuna.trial.Trial],
        fixed: list[str],
        sweep_dir: Path,
    ) -> None:
        batch = []
        for trial in trials:
            params = [as_override(k, v) for k, v in trial.params.items()]
            # Shown by optuna-dashboard with the trial.
            trial.set_user_attr("run_dir", str(sweep_dir / _folder(trial.number)))
            trial.set_user_attr("command", rerun_command([*fixed, *params]))
            batch.append(
                [
                    *fixed,
                    *params,
                    f"{TRIAL_KEY}={trial.number}",
                    f"hydra.sweep.subdir={_folder(trial.number)}",
                ]
            )
        try:
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
        except BaseException:  # Ctrl-C, or a config that does not compose: not the trials' fault
            for trial in trials:
                _interrupt(study, trial)
            raise
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for trial, ret in zip(trials, returns, strict=True):
            self._tell(study, trial, ret, states[trial.number], sweep_dir / _folder(trial.number))

    def _tell(
        self,
        study: optuna.Study,
        trial: optuna.trial.Trial,
        ret: JobReturn,
        state: Any,
        run_dir: Path,
    ) -> None:
        """Complete the trial with its returned metric; any other end (an error, a diverged
        run, a NaN metric) fails it. A pruned trial was already told so by its own job."""
        from optuna.trial import TrialState

        if state.is_finished():
            return
        completed = ret.status == JobStatus.COMPLETED
        value = ret._return_value if completed else None  # .return_value raises when failed
        metrics = read_metrics(run_dir)
        status = metrics.get("status", "finished" if completed else "failed")
        if status == "finished" and isinstance(value, (int, float)) and math.isfinite(value):
            self._tell_study(study, trial, values=float(value))
            return
        error = metrics.get("error") or (
            str(value) if not completed else f"optimized_metric is {value!r}, not a number"
        )
        trial.set_user_attr("status", status)
        trial.set_user_attr("error", " ".join(str(error).split()))
        self._tell_study(study, trial, state=TrialState.FAIL)

    def _tell_study(self, study: optuna.Study, trial: optuna.trial.Trial, **how: Any) -> None:
        try:
            study.tell(trial, **how)
        except RuntimeError as err:
            # GridSampler and BruteForceSampler call study.stop() once every point was asked for,
            # which Optuna allows only inside study.optimize; the trial was stored all the same.
            if "Study.stop" not in str(err):
                raise
            self.grid_done = True

    def _report(self, study: optuna.Study, fixed: list[str], sweep_dir: Path, journal: Path):
        """Log the counts and the best trial with the command that reruns it; write
        optimization_results.yaml beside the study."""
        trials = study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
        log.info(
            "study %s: %d trials (%s); dashboard: optuna-dashboard %s",
            self.study_name,
            len(trials),
            ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            shlex.quote(str(journal)),
        )
        try:
            best = study.best_trial
        except ValueError:  # no completed trial
            raise SearchFailed(
                f"no trial of the search finished ({len(trials)} trials); each trial's error is "
                f"in its folder's metrics.json under {sweep_dir}"
            ) from None
        params = [as_override(k, v) for k, v in best.params.items()]
        command = rerun_command([*fixed, *params])
        log.info(
            "best: trial %d (%s), value %s; rerun it with:",
            best.number,
            _folder(best.number),
            best.value,
        )
        log.info("  %s", command)
        results = {
            "study": self.study_name,
            "storage": str(journal),
            "trials": counts,
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": dict(best.params),
            "command": command,
        }
        (sweep_dir / "optimization_results.yaml").write_text(
            yaml.safe_dump(results, sort_keys=False)
        )


def rerun_command(overrides: Sequence[str]) -> str:
    """The command line that runs these overrides as one run of the same program."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec and spec.name else f"python {sys.argv[0]}"
    return " ".join([program, *(shlex.quote(o) for o in overrides)])


def _folder(number: int) -> str:
    return f"trial_{number:04d}"


def _counted(study: optuna.Study) -> int:
    """Trials that ran to an end (finished, pruned or failed on their own): n_trials counts
    these, so a stopped search relaunched runs what the stop cut off."""
    return sum(
        t.state.is_finished() and "interrupted" not in t.user_attrs
        for t in study.get_trials(deepcopy=False)
    )


def _interrupt(study: optuna.Study, trial: optuna.trial.Trial) -> None:
    """Fail a trial that was stopped (or never started) through no fault of its own."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        trial.set_user_attr("interrupted", True)
    except UpdateFinishedTrialError:  # its job ended it first (pruned)
        return
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


@contextmanager
def _one_search_at_a_time(journal: Path) -> Iterator[None]:
    """Hold a lock on the study file while the search runs: two launches on one sweep folder
    would each mark the other's running trials as failed."""
    with open(journal, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchFailed(
                f"another search is running on {journal.parent}: wait for it to end, or give "
                "this one its own hydra.sweep.dir"
            ) from None
        yield
