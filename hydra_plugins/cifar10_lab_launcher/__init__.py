"""The project's Hydra launcher: sweep jobs in parallel, one fresh process per job, per GPU."""
