"""study.sweep.pool: device slots for the sweep's workers, torch threads per worker, and workers
started early that the study turns out not to need."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from study.errors import UserError
from study.sweep.budget import Budget
from study.sweep.devices import DeviceSlot, device_slots, threads_per_worker, visible_gpus
from study.sweep.pool import EarlyWorkers, EventPipe, Scheduler, Worker
from study.sweep.spec import Command, Event, Finished, Started, Trained

CORES = os.cpu_count() or 1


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose CUDA devices are all hidden, as on a CPU-only host."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_auto_workers_fill_each_gpu_before_sharing_one() -> None:
    slots = device_slots("auto", 2, ["0", "1"])
    assert [slot.device for slot in slots] == ["0", "1", "0", "1"]
    assert [slot.index for slot in slots] == [0, 1, 2, 3]


def test_auto_workers_are_gpus_times_trials_per_gpu() -> None:
    assert len(device_slots("auto", 3, ["4", "5"])) == 6


def test_device_ids_from_yaml_integers_become_cuda_visible_devices_strings() -> None:
    assert [slot.device for slot in device_slots("auto", 1, [0, 1])] == ["0", "1"]


def test_a_worker_count_spreads_over_the_gpus_in_turn() -> None:
    assert [slot.device for slot in device_slots(3, 1, ["0", "1"])] == ["0", "1", "0"]


def test_fewer_workers_than_gpus_use_the_first_gpus() -> None:
    assert [slot.device for slot in device_slots(1, 2, ["0", "1"])] == ["0"]


@pytest.mark.usefixtures("no_gpus")
def test_without_gpus_a_worker_count_gives_that_many_cpu_slots() -> None:
    slots = device_slots(3, 1, None)
    assert slots == [DeviceSlot(0, None), DeviceSlot(1, None), DeviceSlot(2, None)]


@pytest.mark.usefixtures("no_gpus")
def test_without_gpus_auto_gives_one_cpu_slot_per_core() -> None:
    slots = device_slots("auto", 4, None)
    assert len(slots) == CORES
    assert all(slot.device is None for slot in slots)


def test_slot_labels_name_the_device() -> None:
    assert DeviceSlot(0, "1").label == "cuda 1"
    assert DeviceSlot(0, None).label == "cpu"


@pytest.mark.parametrize("workers", [0, -1])
def test_fewer_than_one_worker_is_a_user_error(workers: int) -> None:
    with pytest.raises(UserError, match=rf"sweep.workers={workers} is out of range"):
        device_slots(workers, 1, ["0"])


@pytest.mark.parametrize("workers", ["many", True, 2.5])
def test_a_worker_count_that_is_not_a_number_or_auto_is_a_user_error(workers: object) -> None:
    with pytest.raises(UserError, match=r"sweep.workers=.* is not allowed: use auto"):
        device_slots(workers, 1, ["0"])  # type: ignore[arg-type]


@pytest.mark.parametrize("trials_per_gpu", [0, -2, True, "two"])
def test_trials_per_gpu_below_one_or_not_an_integer_is_a_user_error(
    trials_per_gpu: object,
) -> None:
    with pytest.raises(UserError, match=r"sweep.trials_per_gpu=.* must be >= 1"):
        device_slots("auto", trials_per_gpu, ["0"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("listed", "gpus"),
    [("2,3", ["2", "3"]), (" 1 , 0 ", ["1", "0"]), ("", []), ("-1", [])],
)
def test_visible_gpus_follow_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, listed: str, gpus: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == gpus


@pytest.mark.usefixtures("no_gpus")
def test_without_a_device_list_the_visible_gpus_are_used() -> None:
    assert all(slot.device is None for slot in device_slots(2, 1, None))


def test_one_worker_gets_every_core() -> None:
    assert threads_per_worker(1) == CORES


def test_workers_share_the_cores_without_oversubscribing() -> None:
    for workers in range(1, CORES + 1):
        assert threads_per_worker(workers) * workers <= CORES


def test_more_workers_than_cores_get_one_thread_each() -> None:
    assert threads_per_worker(CORES * 4) == 1


SLOTS = [DeviceSlot(0, None), DeviceSlot(1, None)]


def test_early_workers_not_taken_are_stopped_leaving_no_trace(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    with EarlyWorkers(SLOTS, sweep_dir, threads=1) as early:
        processes = [worker.process for worker in early.waiting.values()]
        assert all(process.poll() is None for process in processes)
        assert sorted(p.name for p in sweep_dir.iterdir()) == ["worker_0.log", "worker_1.log"]
    assert all(process.poll() is not None for process in processes)
    assert not sweep_dir.exists()  # made for them, and nothing else went in


def test_early_workers_leave_what_was_there_and_stop_after_reading_no_spec(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "worker_0.log").write_text("")  # an earlier session's (quiet) worker
    with EarlyWorkers(SLOTS, sweep_dir, threads=1) as early:
        taken = early.take(SLOTS[1])
        assert taken is not None and early.take(SLOTS[1]) is None
        time.sleep(6)  # imported by now: waiting for "start", which never comes
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["worker_0.log", "worker_1.log"]
    taken.process.stdin.close()  # type: ignore[union-attr]
    assert taken.process.wait(timeout=60) == 0  # no "start": it exits without a spec
    assert taken.events.rest() == []  # and said nothing


def test_events_that_arrive_together_are_all_read_at_once() -> None:
    read_fd, write_fd = os.pipe()
    events = EventPipe(read_fd)
    os.write(write_fd, b'{"a": 1}\n{"b": 2}\n{"c"')  # two events and the start of a third
    assert events.read_lines() == ['{"a": 1}', '{"b": 2}']  # none left behind a buffer
    os.write(write_fd, b": 3}\n")
    os.close(write_fd)
    assert events.rest() == ['{"c": 3}']
    assert events.read_lines() is None
    events.close()
    events.close()  # once is enough


def _listening_worker(tmp_path: Path) -> Worker:
    """A worker whose commands from the parent can be read back: `cat` echoes its stdin."""
    process = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    read_fd, _ = os.pipe()
    return Worker(DeviceSlot(0, None), process, EventPipe(read_fd), tmp_path / "worker.log")


def _commands_sent(worker: Worker) -> list[str]:
    assert worker.process.stdin is not None and worker.process.stdout is not None
    worker.process.stdin.close()
    commands = worker.process.stdout.read().decode().split()
    worker.process.wait()
    return commands


@pytest.mark.parametrize(
    ("events", "go_aheads"),
    [
        ([Started(1), Finished(1, "COMPLETE", 0.5)], 1),  # one at a time: the go at its end
        ([Started(1), Trained(1), Finished(1, "COMPLETE", 0.5)], 1),  # packed: at Trained only
        ([Started(1), Started(2), Trained(1), Finished(2, "PRUNED"), Finished(1, "FAIL")], 2),
    ],
)
def test_a_trial_earns_one_go_ahead_as_soon_as_its_slot_is_free(
    tmp_path: Path, events: list[Event], go_aheads: int
) -> None:
    worker = _listening_worker(tmp_path)
    scheduler = Scheduler([worker.slot], tmp_path / "spec.json", tmp_path, max_failures=10)
    for event in events:
        scheduler._handle(worker, event)
    assert _commands_sent(worker) == [Command.TRIAL.value] * go_aheads
    assert (worker.trials, worker.freed) == (set(), set())
    assert scheduler.failed_here == sum(getattr(e, "state", "") == "FAIL" for e in events)


def test_under_a_budget_a_go_ahead_waits_while_the_figures_catch_up(tmp_path: Path) -> None:
    behind = [True]
    worker = _listening_worker(tmp_path)
    scheduler = Scheduler(
        [worker.slot],
        tmp_path / "spec.json",
        tmp_path,
        max_failures=10,
        budget=Budget.start(60),
        hold=lambda: behind[0],
    )
    scheduler.workers.append(worker)
    scheduler._handle(worker, Trained(1))
    scheduler._release()
    assert worker.held == 1  # nothing sent while the figures are behind
    behind[0] = False
    scheduler._release()
    assert (worker.held, _commands_sent(worker)) == (0, [Command.TRIAL.value])


def test_a_go_ahead_held_when_the_budget_runs_out_becomes_a_stop(tmp_path: Path) -> None:
    worker = _listening_worker(tmp_path)
    budget = Budget.start(60)
    scheduler = Scheduler(
        [worker.slot], tmp_path / "spec.json", tmp_path, max_failures=10, budget=budget
    )
    scheduler.hold = lambda: True
    scheduler.workers.append(worker)
    scheduler._handle(worker, Trained(1))
    scheduler.budget = Budget.start(60, time.monotonic() - 61)  # spent meanwhile
    scheduler._release()
    assert (worker.held, _commands_sent(worker)) == (0, [Command.STOP.value])
