"""A sweep worker process: `python -m study.sweep.worker SPEC INDEX EVENTS_FD`.

Imports, waits for "start" on stdin (it may be started before its spec is written), loads the
study once, then claims one trial per "trial" line on stdin until "stop" or EOF,
reporting each trial to the parent as events (study.sweep.spec) on EVENTS_FD. It runs its trials
one at a time, or `sweep.pack` at a time in one packed model (study.sweep.packs). Imports
(torch, Lightning, MLflow: ~5 s) are paid once per worker, not once per trial.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import optuna
import torch

from study.errors import exit_now, interrupt_once, report
from study.sweep.backends import StudyLock, make_pruner, make_sampler, make_storage, quiet_optuna
from study.sweep.claims import claim_trial
from study.sweep.packs import PackRunner
from study.sweep.recovery import StaleTrialCallback
from study.sweep.spec import Command, Exhausted, Ready, WorkerSpec, read_command
from study.sweep.trials import TrialRunner
from study.tracking import configure_process


def main(argv: list[str]) -> int:
    spec_path, index, events_fd = Path(argv[0]), int(argv[1]), int(argv[2])
    if read_command(sys.stdin) != Command.START:  # started early, then not needed
        return 0
    spec = WorkerSpec.read(spec_path)
    configure_process()
    quiet_optuna()
    torch.set_num_threads(int(os.environ.get("STUDY_WORKER_THREADS", "1")))
    # The parent stops workers with SIGTERM: unwind like Ctrl-C so runs are closed KILLED, and
    # a second SIGTERM (the parent's death, through die_with_parent) does not cut that short.
    die_with_parent()
    with interrupt_once():
        try:
            runner = TrialRunner(spec, index, events_fd)
            on_stale = StaleTrialCallback(
                runner.client, spec.experiment_id, spec.parent_run_id, spec.settings.retries
            )
            storage = make_storage(spec.settings.storage_url, spec.settings.heartbeat_s, on_stale)
            study = optuna.load_study(
                study_name=spec.settings.study_name,
                storage=storage,
                sampler=make_sampler(spec.settings.sampler, spec.settings.seed + index),
                pruner=make_pruner(spec.settings.pruner, spec.settings.max_epochs, spec.in_flight),
            )
            lock = StudyLock(spec.settings.storage_url, spec.settings.study_name)

            go_aheads = 0  # "trial" lines from the parent not yet spent on a trial
            claimed = 0  # its first pack is claimed whatever the budget says (sweep.budget)
            stopped = False  # the parent said stop, or the study has no trial left for us

            def next_trial(wait: bool = True) -> optuna.Trial | None:
                """The next trial to run, once the parent says go on; None when there is none
                (with `wait=False`: none right now, while this worker's own trials still run)."""
                nonlocal go_aheads, stopped, claimed
                if stopped:
                    return None
                if not go_aheads:
                    if read_command(sys.stdin) != Command.TRIAL:
                        stopped = True
                        return None
                    go_aheads += 1
                deadline = spec.deadline if claimed >= spec.settings.pack else None
                trial = claim_trial(study, storage, spec.settings.n_trials, lock, wait, deadline)
                if trial is not None:
                    go_aheads -= 1
                    claimed += 1
                elif wait:
                    stopped = True
                    runner.emit(Exhausted())
                return trial

            runner.emit(Ready(slots=spec.settings.pack))
            if spec.settings.packed:
                PackRunner(runner, study, storage, next_trial).run()
            else:
                while (trial := next_trial()) is not None:
                    runner.run(study, storage, trial)
        finally:
            os.close(events_fd)
    return 0


def die_with_parent() -> None:
    """Linux: get SIGTERM when the sweep's parent dies, instead of training on as an orphan."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def entry(argv: list[str]) -> int:
    """main(argv) as a process runs it: its exit code, errors reported on stderr."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # UserError: one line; anything else: a traceback, masked
        return report(error)


if __name__ == "__main__":
    code = entry(sys.argv[1:])
    if code:
        sys.exit(code)
    exit_now(code)  # the parent waits for this exit before it sums up the study
