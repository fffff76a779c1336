"""Where a train stage's time goes besides training, and what a no-op `dvc repro` costs.

    python bench/overhead.py [--cell binary-softmax-ce] [--repeats 3]

Run it in a clone of a project whose pipeline has run (`dvc repro`): it times a no-op
`dvc repro` first, then reruns one cell's train stage, directly and with
`dvc repro -f -s train@<cell>`; the reruns log new MLflow runs and rewrite the cell's
record.json (new run ids; the checkpoints come out identical). Each figure is the median of
--repeats fresh processes:
  - interpreter start + the stage's imports (torch, mlflow, torchinfo, misfit),
  - the whole `python stages/train.py <cell>` process, and the training inside it,
  - the whole `dvc repro -f -s train@<cell>`, i.e. DVC's own cost around the command,
  - a no-op `dvc repro` of the whole pipeline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def median_of(command: list[str], repeats: int) -> float:
    return statistics.median(timed(command) for _ in range(repeats))


def training_seconds(cell: str) -> float:
    """Seconds of the epochs themselves, summed from the record the last run wrote."""
    record = json.loads((ROOT / "models" / cell / "record.json").read_text())
    epochs: dict[int, float] = {}
    for run in record["runs"]:
        for entry in run["history"]:
            epochs[entry["epoch"]] = entry["seconds"]
    return sum(epochs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="binary-softmax-ce")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    # first, while the pipeline is current: the timed reruns below change one cell's outputs
    noop = median_of(["dvc", "repro"], args.repeats)
    figures = {
        "python start (no imports)": median_of([python, "-c", "pass"], args.repeats),
        "stage imports (torch, mlflow, torchinfo, misfit)": median_of(
            [python, "-c", "import torch, mlflow, torchinfo, misfit.train_stage"], args.repeats),
        "open MLflow store + experiment": median_of(
            [python, "-c", "from pathlib import Path; from misfit.tracking import open_experiment;"
                           "open_experiment(Path('.'), 'misfit')"], args.repeats),
    }
    stage = median_of([python, "stages/train.py", args.cell], args.repeats)
    train = training_seconds(args.cell)
    dvc_stage = median_of(["dvc", "repro", "-f", "-s", f"train@{args.cell}"], args.repeats)
    print(f"cell {args.cell}: whole train process {stage:.2f} s, of which epochs {train:.2f} s")
    for name, seconds in figures.items():
        print(f"  {name:<52} {seconds:6.2f} s  {seconds / stage:6.1%} of the process")
    print(f"  {'everything else (data, summary, test, writing)':<52} "
          f"{stage - train - figures['stage imports (torch, mlflow, torchinfo, misfit)']:6.2f} s")
    print(f"dvc repro -f -s train@{args.cell}: {dvc_stage:.2f} s; DVC's own share {dvc_stage - stage:.2f} s "
          f"({(dvc_stage - stage) / dvc_stage:.1%})")
    print(f"no-op dvc repro of the whole pipeline: {noop:.2f} s")
    print(json.dumps({"cell": args.cell, "process_s": round(stage, 3), "epochs_s": round(train, 3),
                      **{k: round(v, 3) for k, v in figures.items()}, "dvc_stage_s": round(dvc_stage, 3),
                      "noop_repro_s": round(noop, 3)}))


if __name__ == "__main__":
    main()
