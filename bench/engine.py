"""Wall time of the same cells on one machine: sequential `dvc repro`, `dvc queue`, `misfit run`.

Each way gets its own fresh project (synthetic IDX files, the tests' tiny profile, local
MLflow store, OMP_NUM_THREADS = cores // jobs for the parallel ways) and ends with every
train stage and the report in its workspace:

  sequential  `dvc repro`
  queue       `dvc exp run --queue <cell's stages>` per cell, `dvc queue start -j N`, wait,
              then `dvc repro` (restores every cell from the shared run-cache, builds the report)
  misfit      `misfit run --jobs N` (an embedded Dask LocalCluster)

    python bench/engine.py                    # 6 cells x 2 seeds, all three ways, once each
    python bench/engine.py --ways misfit queue --rounds 2

The last line is JSON: seconds per way and round.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' synthetic-project helpers

from conftest import base_env, make_project, run, small_params, synthetic_mnist  # noqa: E402

CELLS = ["regression-none-mse-zscore", "regression-none-bce-zscore", "probability-sigmoid-bce",
         "binary-softmax-ce", "multiclass-logits-ce", "multilabel-sigmoid-bce"]


def cell_stages(project: Path, env: dict) -> dict[str, list[str]]:
    names = run(["dvc", "stage", "list", "--name-only"], project, env).stdout.split()
    return {cell: [n for n in names if n.endswith(f"@{cell}")] for cell in CELLS}


def sequential(project: Path, env: dict, jobs: int) -> None:
    run(["dvc", "repro"], project, env, timeout=3600)


def queue(project: Path, env: dict, jobs: int) -> None:
    for stages in cell_stages(project, env).values():
        run(["dvc", "exp", "run", "--queue", *stages], project, env)
    run(["dvc", "queue", "start", "-j", str(jobs)], project, env)
    deadline = time.monotonic() + 3600
    while True:  # `dvc queue status` lists each task; done when none is queued or running
        status = run(["dvc", "queue", "status"], project, env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert "Failed" not in status, status
    run(["dvc", "repro"], project, env, timeout=3600)


def misfit(project: Path, env: dict, jobs: int) -> None:
    run(["misfit", "run", "--jobs", str(jobs)], project, env, timeout=3600)


WAYS = {"sequential": sequential, "queue": queue, "misfit": misfit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {way: [] for way in args.ways}
    with tempfile.TemporaryDirectory(prefix="misfit-engine-bench-") as tmp:
        tmp = Path(tmp)
        manifest = synthetic_mnist(tmp / "mirror")
        params = small_params(CELLS, seeds=[0, 1])
        for round_ in range(args.rounds):
            for way in args.ways:  # alternating, so that a busy spell hits every way alike
                project = make_project(tmp / f"{way}-{round_}", params)
                threads = "1" if way != "sequential" else str(max(1, args.jobs))
                env = base_env(MNIST_MIRROR=str(tmp / "mirror"), MNIST_MANIFEST=str(manifest),
                               OMP_NUM_THREADS=threads)
                started = time.perf_counter()
                WAYS[way](project, env, args.jobs)
                seconds[way].append(round(time.perf_counter() - started, 1))
                results = json.loads((project / "reports" / "results.json").read_text())
                assert sorted(results["cells"]) == sorted(CELLS), way
                print(f"{way} round {round_}: {seconds[way][-1]} s", flush=True)
    print(json.dumps({"cells": len(CELLS), "seeds": 2, "jobs": args.jobs, "seconds": seconds}))


if __name__ == "__main__":
    main()
