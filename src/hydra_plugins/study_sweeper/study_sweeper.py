"""A thin Hydra Sweeper: Hydra composes the config, study.sweep.driver runs the study."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class StudySweeper(Sweeper):
    def __init__(self) -> None:
        self.config: DictConfig | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config

    def sweep(self, arguments: list[str]) -> Any:
        from study.sweep.plan import plan_sweep

        started = time.monotonic()  # sweep.timeout counts from here, on this host
        assert self.config is not None
        hydra_cfg = self.config.hydra
        HydraConfig.instance().set_config(self.config)
        main_source = next(s for s in hydra_cfg.runtime.config_sources if s.provider == "main")
        conf_dir = str(main_source.path).removeprefix("file://")
        choices = {str(k): v for k, v in hydra_cfg.runtime.choices.items()}
        # Workers compose their trials themselves: hand them the --config-dir folders too.
        extra = [s.path for s in hydra_cfg.runtime.config_sources if s.provider == "command-line"]
        if extra:
            arguments = [*arguments, f"hydra.searchpath=[{','.join(extra)}]"]
        plan = plan_sweep(
            self.config,
            arguments,
            conf_dir,
            hydra_cfg.job.config_name,
            Path(hydra_cfg.sweep.dir),
            choices,
        )
        from study.sweep.pool import EarlyWorkers, worker_imports
        from study.sweep.resume import nothing_to_do, read_study

        # A study that means something else, or has nothing left to run, answers before any
        # worker starts or MLflow is imported.
        state = read_study(plan)
        if state.finished >= plan.settings.n_trials:
            print(nothing_to_do(plan))
            return []
        print(plan.first_line(), flush=True)
        plan = plan.capped_to(plan.settings.n_trials - state.finished)
        # The workers (or their fork server) import (~4 s) while the parent imports MLflow and
        # opens the study.
        with EarlyWorkers(
            plan.slots,
            plan.sweep_dir,
            plan.threads,
            plan.fork_server,
            worker_imports(plan.settings.packed),
        ) as early:
            from study.sweep.driver import run_sweep  # MLflow: after the plan is checked

            run_sweep(self.config, plan, early, started)
        return []
