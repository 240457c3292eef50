"""Optuna studies over a config's search space, trials run by a pool of worker processes.

The parent (driver: plan -> study and parent run -> pool -> report) and the workers (worker:
claims -> train -> tracking) share the contract in spec. Import the module you need:
`study.sweep.driver.run_sweep` starts a study.
"""
