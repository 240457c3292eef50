"""The peer of `python tools/bench.py peer`: the study a careful user writes by hand with PyTorch,
Optuna and MLflow, all in one process. Breast cancer (a stratified 60/20/20 split,
standardized), an MLP
64x64 with dropout, Adam; TPE over lr, batch size and dropout and the median pruner, as
`sweep.sampler=tpe sweep.pruner=median` set them up; one MLflow `log_batch` per trial.

python tools/plain_study.py TRACKING_URI [--trials 20] [--epochs 30] [--history JSON]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

Pair = tuple[torch.Tensor, torch.Tensor]


def split_rows(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row numbers of the training, validation and test splits: 60/20/20, stratified."""
    rows = np.arange(len(y))
    train, rest = train_test_split(rows, test_size=0.4, random_state=0, stratify=y)
    val, test = train_test_split(rest, test_size=0.5, random_state=0, stratify=y[rest])
    return train, val, test


def load() -> tuple[Pair, Pair]:
    """The training and validation splits, standardized with the training split's statistics."""
    x, y = load_breast_cancer(return_X_y=True)
    train, val, _ = split_rows(y)
    x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)

    def pair(x: object, y: object) -> Pair:
        return torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y).float()

    return pair(x_train, y_train), pair(x_val, y_val)


def objective(
    trial: optuna.Trial, data: tuple[Pair, Pair], epochs: int, client: MlflowClient, exp: str
) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    batch_size = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    (x, y), (x_val, y_val) = data
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in ((x.shape[1], 64), (64, 64)):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(64, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    metrics: list[Metric] = []
    best = math.inf
    try:
        for epoch in range(epochs):
            net.train()
            total = torch.zeros(())
            for index in torch.randperm(len(y)).split(batch_size):
                optimizer.zero_grad()
                loss = loss_fn(net(x[index]).squeeze(1), y[index])
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(index)
            net.eval()
            with torch.no_grad():
                val_loss = loss_fn(net(x_val).squeeze(1), y_val).item()
            best = min(best, val_loss)
            now = int(time.time() * 1000)
            metrics += [
                Metric("train/loss", (total / len(y)).item(), now, epoch),
                Metric("val/loss", val_loss, now, epoch),
            ]
            trial.report(best, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
    finally:
        run_id = client.create_run(exp, run_name=f"trial {trial.number}").info.run_id
        params = [Param(key, str(value)) for key, value in trial.params.items()]
        client.log_batch(run_id, metrics=metrics, params=params)
        client.set_terminated(run_id)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tracking_uri")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--history", type=Path, help="write each trial's end (Unix time), value and state here"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name("plain")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("plain")
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=0, multivariate=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    data = load()
    study.optimize(
        lambda trial: objective(trial, data, args.epochs, client, experiment_id),
        n_trials=args.trials,
    )
    if args.history:
        ends = [
            (t.datetime_complete.timestamp(), t.value, t.state.name)
            for t in study.trials
            if t.datetime_complete
        ]
        args.history.write_text(json.dumps(ends))
    print(f"best val/loss {study.best_value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
