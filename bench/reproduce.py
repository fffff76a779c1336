"""Wall time of `misfit reproduce` for one run of a typical cell on real MNIST (issue 22 item 3:
one run in about a minute on a 2-core CPU).

In a temp project (this checkout's pipeline, the study's protocol, one cell, one seed, no
further draws) it runs `dvc repro` on the MNIST files of MNIST_MIRROR (default
../shared/data/mnist) to get a committed record, then times `misfit reproduce <cell> --seed 0`
and prints that time and the record's own training time for the same run.

    python bench/reproduce.py [--cell multiclass-softmax-ce] [--dry-run] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src", "reference", ".dvcignore", ".gitignore")


def make_project(target: Path, cell: str) -> None:
    """This checkout's pipeline with one cell, one seed and no further draws: one run to reproduce."""
    target.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, target / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cells"] = {cell: {k: v for k, v in params["cells"][cell].items() if k != "seeds"}}
    params["seeds"], params["draws"]["subset_seeds"] = [0], []
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "bench project"]):
        subprocess.run(command, cwd=target, check=True, env=environment())
    if (REPO / ".dvc" / "plots").is_dir():
        shutil.copytree(REPO / ".dvc" / "plots", target / ".dvc" / "plots", dirs_exist_ok=True)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MNIST_MIRROR", str(REPO.parent / "shared" / "data" / "mnist"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="bench",
               GIT_AUTHOR_EMAIL="bench@example.com", GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com")
    env.pop("MLFLOW_TRACKING_URI", None)  # the temp project's own store
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="multiclass-softmax-ce")
    parser.add_argument("--dry-run", action="store_true", help="say what would be measured, and stop")
    parser.add_argument("--keep", action="store_true", help="keep the temp project")
    args = parser.parse_args()
    env = environment()
    print(f"would measure: `misfit reproduce {args.cell} --seed 0` (one run: the study's protocol, "
          f"2,000 train / 3,000 valid / 10,000 test images of {env['MNIST_MIRROR']}), after `dvc repro` "
          "has trained and evaluated that run once in a temp project")
    if args.dry_run:
        return 0
    root = Path(tempfile.mkdtemp(prefix="misfit-bench-reproduce-")) / "project"
    try:
        make_project(root, args.cell)
        started = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=root, env=env, check=True, capture_output=True, text=True)
        print(f"dvc repro (data stages, train, evaluate, report): {time.perf_counter() - started:.1f} s")
        record = json.loads((root / "records" / f"{args.cell}.json").read_text())
        started = time.perf_counter()
        done = subprocess.run(["misfit", "reproduce", args.cell, "--seed", "0"], cwd=root, env=env, check=False,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        print(done.stdout[-1500:], done.stderr[-1500:], sep="")
        print(f"misfit reproduce: {seconds:.1f} s wall (exit {done.returncode}); the train stage took "
              f"{record['phases'].get('training', float('nan')):.1f} s to train the same run, "
              f"{record['runs'][0]['epochs_run']} epochs; threads {record['tags'].get('threads')}")
        return done.returncode
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
