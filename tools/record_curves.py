"""Record the labelled learning curves the verdict tests read (tests/data/labelled_curves.json).

python tools/record_curves.py [--output PATH]

Each case is a real training of the project's conf/ (the packed engine: the same numbers a
sweep's trial gets, bit for bit on CPU), labelled with the verdict its set-up is built to show:
too little capacity, learning rate or epochs underfit; a wide unregularized network trained long
overfits; a learning rate far too large diverges; small batches at a high learning rate give
noisy curves that still converge (good). Rerunning this script reproduces the file exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from study.packing import fit_packed

from study.config import resolved_config, validate
from study.data import prepare_data
from study.paths import CONF_DIR, PROJECT_ROOT

OUTPUT = PROJECT_ROOT / "tests" / "data" / "labelled_curves.json"
ENGINE = ["trainer.engine=packed", "trainer.progress_bar=false", "tracking.uri=null"]
SMALL = ["data.n_samples=120"]
WIDE = [*SMALL, "model.hidden_sizes=[256,256]", "trainer.early_stopping.enabled=false"]
BALANCED = ["trainer.max_epochs=300"]
DIABETES = ["data=diabetes", "model=regressor"]

# (name, label, kind, overrides): kind "clear" must be judged right; "noisy" good runs must
# never be called overfit.
CASES: list[tuple[str, str, str, list[str]]] = [
    ("tiny lecture", "underfit", "clear", ["+preset=tiny"]),
    ("tiny diabetes", "underfit", "clear", ["+preset=tiny", *DIABETES]),
    (
        "narrow [8], 60 epochs",
        "underfit",
        "clear",
        [*WIDE, "model.hidden_sizes=[8]", "trainer.max_epochs=60"],
    ),
    ("lr 1e-5", "underfit", "clear", [*BALANCED, "optimizer.lr=1e-5"]),
    ("5 epochs", "underfit", "clear", [*BALANCED, "trainer.max_epochs=5"]),
    (
        "regressor lr 1e-5",
        "underfit",
        "clear",
        [*BALANCED, "model=regressor", "optimizer.lr=1e-5"],
    ),
    ("balanced lecture", "good", "clear", BALANCED),
    ("balanced lecture seed 1", "good", "clear", [*BALANCED, "seed=1"]),
    ("balanced regressor", "good", "clear", [*BALANCED, "model=regressor"]),
    ("balanced breast cancer", "good", "clear", [*BALANCED, "data=breast_cancer"]),
    ("wide + dropout 0.5", "good", "clear", [*WIDE, "trainer.max_epochs=60", "model.dropout=0.5"]),
    ("wide, 120 students", "overfit", "clear", [*WIDE, "trainer.max_epochs=60"]),
    ("wide, 120 students, seed 1", "overfit", "clear", [*WIDE, "trainer.max_epochs=60", "seed=1"]),
    ("wide preset lecture", "overfit", "clear", ["+preset=wide"]),
    ("wide preset diabetes", "overfit", "clear", ["+preset=wide", *DIABETES]),
    ("lr 10", "diverged", "clear", [*BALANCED, "optimizer.lr=10"]),
    (
        "regressor sgd lr 1",
        "diverged",
        "clear",
        [*BALANCED, "model=regressor", "optimizer=sgd", "optimizer.lr=1"],
    ),
    ("batch 4, lr 1e-2", "good", "noisy", [*BALANCED, "data.batch_size=4", "optimizer.lr=1e-2"]),
    (
        "batch 4, lr 1e-2, seed 1",
        "good",
        "noisy",
        [*BALANCED, "data.batch_size=4", "optimizer.lr=1e-2", "seed=1"],
    ),
    ("batch 8, lr 3e-2", "good", "noisy", [*BALANCED, "data.batch_size=8", "optimizer.lr=3e-2"]),
    (
        "batch 4, lr 1e-2, regressor",
        "good",
        "noisy",
        [*BALANCED, "model=regressor", "data.batch_size=4", "optimizer.lr=1e-2"],
    ),
    # Built as a noisy good run, but its curves overfit: train/loss falls to 0.006 while
    # val/loss ends ten times above its minimum (breast cancer is memorized fast).
    (
        "batch 4, lr 1e-2, breast cancer",
        "overfit",
        "noisy",
        [*BALANCED, "data=breast_cancer", "data.batch_size=4", "optimizer.lr=1e-2"],
    ),
    (
        "batch 8, lr 1e-2, 120 students",
        "good",
        "noisy",
        [*BALANCED, *SMALL, "data.batch_size=8", "optimizer.lr=1e-2"],
    ),
]


def record(name: str, label: str, kind: str, overrides: list[str], folder: Path) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*ENGINE, *overrides])
    validate(cfg)
    cfg = resolved_config(cfg)
    result = fit_packed(cfg, folder, prepare_data(cfg))
    history = [
        {key: round(float(value), 7) for key, value in row.items()} for row in result.history
    ]
    print(f"{name:<34} {label:<8} -> {result.diagnosis.verdict:<8} {len(history)} epochs")
    return {
        "name": name,
        "label": label,
        "kind": kind,
        "overrides": overrides,
        "baseline": round(result.baseline_loss, 7),
        "history": [{k: v for k, v in row.items() if k in KEYS} for row in history],
    }


KEYS = ("epoch", "train/loss", "val/loss")


def dump(cases: list[dict]) -> str:
    """The cases as JSON, an epoch a line: small diffs when a case is added or rerecorded."""
    parts = []
    for case in cases:
        head = json.dumps({key: value for key, value in case.items() if key != "history"})
        rows = ",\n  ".join(json.dumps(row) for row in case["history"])
        parts.append(f'{head[:-1]}, "history": [\n  {rows}\n]}}')
    return "[\n" + ",\n".join(parts) + "\n]\n"


def accuracy(path: Path) -> int:
    """Today's verdict on each recorded case next to its label; 1 if a clear case is judged
    wrong or a noisy good run is called overfit."""
    from study.diagnosis import OVERFIT, diagnose_history

    cases = json.loads(path.read_text())
    wrong = 0
    for case in cases:
        verdict = diagnose_history(case["history"], baseline=case["baseline"]).verdict
        bad = (case["kind"] == "clear" and verdict != case["label"]) or (
            case["label"] == "good" and verdict == OVERFIT
        )
        wrong += bad
        mark = "WRONG" if bad else ("ok" if verdict == case["label"] else "~")
        print(f"{case['name']:<34} {case['kind']:<6} {case['label']:<8} {verdict:<8} {mark}")
    for kind in ("clear", "noisy"):
        some = [c for c in cases if c["kind"] == kind]
        right = sum(
            diagnose_history(c["history"], baseline=c["baseline"]).verdict == c["label"]
            for c in some
        )
        print(f"{kind}: {right}/{len(some)} verdicts match their label")
    return int(wrong > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument(
        "--check", action="store_true", help="judge the recorded cases, train nothing"
    )
    args = parser.parse_args(argv)
    if args.check:
        return accuracy(args.output)
    with tempfile.TemporaryDirectory() as folder:
        cases = [record(*case, Path(folder)) for case in CASES]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(dump(cases))
    print(f"{len(cases)} labelled runs: {args.output}")
    return accuracy(args.output)


if __name__ == "__main__":
    sys.exit(main())
