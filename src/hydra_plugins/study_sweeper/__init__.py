"""Hydra sweeper plugin that runs `-m sweep` as an Optuna study (see study.sweep)."""
