"""study.sweep.spec: the worker spec and the events, as they cross the process boundary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import optuna
import pytest

from study.sweep.space import Param
from study.sweep.spec import (
    Command,
    CurvesDue,
    Exhausted,
    Finished,
    Lost,
    Ready,
    Started,
    StudySettings,
    Trained,
    WorkerSpec,
    decode_event,
    encode_event,
    read_command,
    send_command,
)

Distributions = optuna.distributions


def _spec() -> WorkerSpec:
    return WorkerSpec(
        settings=StudySettings(
            study_name="lecture",
            storage_url="postgresql://u:secret@h/db",
            sampler="tpe",
            pruner="median",
            seed=3,
            direction="minimize",
            metric="val/loss",
            max_epochs=50,
            n_trials=20,
            retries=1,
            heartbeat_s=10,
            pack=8,
            packed=True,
            overrides=["data=wine"],
            config_name="sweep",
            conf_dir="/conf",
            params=[
                Param(
                    "optimizer.lr", Distributions.FloatDistribution(1e-4, 1e-1, log=True), False
                ),
                Param("data.batch_size", Distributions.IntDistribution(16, 128, log=True), False),
                Param("optimizer", Distributions.CategoricalDistribution(["adam", "sgd"]), True),
            ],
        ),
        in_flight=16,
        base_config={"optimizer": {"lr": 0.001}, "model": {"hidden_sizes": [32, 32]}},
        sweep_dir="/multirun/lecture",
        experiment_id="1",
        parent_run_id="abc",
        tracking_uri=None,
    )


def test_a_worker_spec_survives_its_json_round_trip() -> None:
    spec = _spec()
    assert WorkerSpec.from_json(spec.to_json()) == spec


def test_a_worker_spec_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = _spec().write(tmp_path / "spec.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert WorkerSpec.read(path) == _spec()


@pytest.mark.parametrize(
    "event",
    [
        Ready(),
        Started(4),
        Trained(4),
        CurvesDue({"run_id": "r", "history": [{"epoch": 1.0, "val/loss": 0.5}]}),
        Finished(4, "COMPLETE", 0.25, "run", "cpu", 12),
        Exhausted(),
        Lost(4, -9),
    ],
)
def test_an_event_survives_its_one_line_encoding(event: object) -> None:
    line = encode_event(event)  # type: ignore[arg-type]
    assert "\n" not in line
    assert decode_event(line) == event


def test_commands_cross_a_pipe_as_one_line_each_and_the_end_reads_as_none() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as writer:
        for command in Command:
            send_command(writer, command)
    with os.fdopen(read_fd) as reader:
        assert [read_command(reader) for _ in range(4)] == [*Command, None]


def test_a_command_to_a_worker_that_is_gone_is_dropped_quietly() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "wb", buffering=0) as writer:
        send_command(writer, Command.STOP)  # no BrokenPipeError: the pool sees its exit code
