"""What reaches the console and the run's log: library noise dropped, Lightning's messages
routed through Hydra's handlers, tables written to the log file only."""

from __future__ import annotations

import logging
import warnings


def _no_tips(record: logging.LogRecord) -> bool:
    return "Tip:" not in record.getMessage()


# Lightning warnings that say nothing about the run:
LIBRARY_NOISE = (
    # a deprecation raised inside Lightning itself (not fixable from our side)
    r".*isinstance\(treespec, LeafSpec\).*",
    # on any machine with SLURM installed; SLURM runs go through hydra/launcher=slurm*
    r"The `srun` command is available on your system but is not used",
    # best.ckpt's monitor before the first validation (a run stopped by trainer.max_steps);
    # once validation has run, Lightning raises an error for a missing key instead
    r".*ModelCheckpoint\(monitor=.*could not find the monitored key",
)


def quiet_library_noise() -> None:
    """Drop messages that say nothing about the run: Lightning's cloud-service tips and the
    warnings in LIBRARY_NOISE. Called by every entry point (a test harness may reset the
    warning filters in between, so calling again is the norm)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _no_tips not in logger.filters:
            logger.addFilter(_no_tips)
    for pattern in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


def route_library_logs() -> None:
    """Send Lightning's messages ("GPU available", "Trainer.fit stopped", ...) through the
    handlers Hydra configured, so the run's log holds them as the console shows them. Lightning
    gives itself console handlers of its own when it is imported before logging is set up."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)  # as Lightning sets it (a tool in this process may not)
        if logging.getLogger().handlers:
            logger.handlers.clear()
            logger.propagate = True


def to_log_file(text: str, name: str = __name__) -> None:
    """Write `text` to the run's log file only (as logger `name`): for what the console shows
    in its own way (tables, progress bars)."""
    record = logging.LogRecord(name, logging.INFO, __file__, 0, "%s", (text,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
