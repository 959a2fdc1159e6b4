"""The project's Optuna sweeper: a search kept in a study file in the sweep folder."""
