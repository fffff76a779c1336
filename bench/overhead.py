"""The fixed cost of a cell: the README's smoke profile over all 42 cells, timed, with the
train stage's own breakdown, side by side with another commit; and the study efficiency.

    python bench/overhead.py [--baseline REV] [--cold] [--mirror DIR]   # smoke profile, this commit vs REV
    python bench/overhead.py --efficiency [--log LOG...]       # from records/ of a full study

Smoke: for this commit (and REV, if given; and with --cold this commit again with
MISFIT_WARM=0, each stage in its own process) it makes a clone under a temp dir, runs the
data stages of the smoke profile there (not timed), then times `dvc repro` of every
remaining stage (42 train stages, the report, and for older commits their evaluate
stages). All run in the same process one after the other, so the ratios are measured on
the same machine in the same state. The breakdown per part of the train stage comes from
each record's `phases`; the stage process, the warm worker's start (or, without one,
each stage's interpreter start and imports) and the report stage are timed as separate
processes, and DVC's own share is what all these leave of the wall time (with each forked
child's exit and each stage process's wait for it, which no record's phases cover).

Efficiency: Σ seconds spent in epochs / wall seconds of the study. The epochs' seconds
come from the records (each epoch's wall, counted once per cell); the wall from the
timestamps scripts/publish_study.sh writes to its logs (a study may span sessions), else
the records' stage seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
IMPORTS = "import torch, mlflow, torchinfo, misfit.train.stage"


def smoke_overrides(root: Path) -> list[str]:
    """The smoke profile's overrides as `key=value` (profiles/smoke.yaml, which `misfit profile
    smoke` runs), or, for commits before profiles, the -S overrides of the README's smoke command."""
    profile = root / "profiles" / "smoke.yaml"
    if profile.exists():
        return [f"{key}={json.dumps(value)}"  # JSON is YAML: apply_overrides reads it back
                for key, value in yaml.safe_load(profile.read_text())["set"].items()]
    line = next(l for l in (root / "README.md").read_text().splitlines() if l.strip().startswith("dvc exp run -S"))
    words = shlex.split(line.strip())
    return [words[i + 1] for i, word in enumerate(words) if word == "-S"]


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    for override in overrides:
        key, value = override.split("=", 1)
        *path, last = key.split(".")
        target = params
        for part in path:
            target = target[part]
        target[last] = yaml.safe_load(value)
    return params


def run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def prepared_clone(rev: str, clone: Path, env: dict, keep_cells: int | None) -> Path:
    """A clone at rev with its own venv-free setup: the smoke params and the data stages done."""
    clone.parent.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "-q", str(ROOT), str(clone)], clone.parent, env)
    run(["git", "checkout", "-q", rev], clone, env)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    overrides = [o for o in smoke_overrides(ROOT)
                 if not (o.startswith("draws.") and "draws" not in params)]
    params = apply_overrides(params, overrides)
    if keep_cells:
        params["cells"] = dict(list(params["cells"].items())[:keep_cells])
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "label-derive"], clone, env)  # train-/evaluate-inputs count in the timing
    return clone


def timed_repro(clone: Path, env: dict) -> tuple[float, int]:
    started = time.perf_counter()
    done = run(["dvc", "repro"], clone, env)
    wall = time.perf_counter() - started
    return wall, len(re.findall(r"^Running stage", done.stdout, re.M))


def process_seconds(command: list[str], cwd: Path, env: dict, repeats: int = 3) -> float:
    def once() -> float:
        started = time.perf_counter()
        run(command, cwd, env)
        return time.perf_counter() - started
    return statistics.median(once() for _ in range(repeats))


def phase_totals(clone: Path) -> dict[str, float]:
    totals: dict[str, float] = {}
    for path in sorted((clone / "records").glob("*.json")):
        for name, seconds in json.loads(path.read_text()).get("phases", {}).items():
            totals[name] = totals.get(name, 0.0) + seconds
    return totals


def stage_parts(clone: Path, env: dict, cells: int, wall: float) -> dict[str, float]:
    """Where the smoke profile's wall time went, summed over its stages."""
    imports = process_seconds([sys.executable, "-c", IMPORTS], clone, env)
    # the warm worker's module: src/misfit/run/warm.py since the packages, src/misfit/warm.py before
    module = next((name for name, path in (("misfit.run.warm", "run/warm.py"), ("misfit.warm", "warm.py"))
                   if (clone / "src" / "misfit" / path).exists()), None)
    stages = cells * (2 if (clone / "stages" / "evaluate.py").exists() else 1)  # train@ (and evaluate@) per cell
    if env.get("MISFIT_WARM", "1") != "0" and module:  # a worker start per stage kind; each stage hands over
        stage_process = process_seconds([sys.executable, "-c", f"import {module}"], clone, env)
        parts = {f"stage processes: interpreter, {module}, hand-over (x {stages} stages)": stage_process * stages,
                 "warm workers: interpreter and imports (once per stage kind)": imports}
    else:
        python = process_seconds([sys.executable, "-c", "pass"], clone, env)
        parts = {"interpreter start (x stages)": python * stages,
                 "imports: torch, mlflow, torchinfo, misfit (x stages)": (imports - python) * stages}
    parts.update({f"train stage: {name}": seconds for name, seconds in phase_totals(clone).items()})
    evaluated = [json.loads(p.read_text()).get("seconds", 0.0) for p in sorted((clone / "evaluations").glob("*.json"))]
    if evaluated:
        parts["evaluate stages: in-stage (scoring, calibration, MLflow, writing)"] = sum(evaluated)
    # its outputs come out the same again: the smoke run's records are unchanged
    parts["report stage (its process, run again on its own)"] = process_seconds(
        [sys.executable, "stages/report.py"], clone, env, repeats=1)
    parts["DVC and the stages' ends (the rest)"] = wall - sum(parts.values())
    return parts


def smoke(args) -> None:
    env = {**os.environ, "MNIST_MIRROR": str(Path(args.mirror).resolve()), "PYTHONPATH": "src",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    # (label, revision, environment): all in this one process, one after the other
    variants = [("HEAD", "HEAD", {})]
    if args.cold:
        variants.append(("HEAD, MISFIT_WARM=0", "HEAD", {"MISFIT_WARM": "0"}))
    if args.baseline:
        variants.append((args.baseline, args.baseline, {}))
    figures = {}
    with tempfile.TemporaryDirectory(prefix="misfit-overhead-") as tmp:
        for index, (label, rev, extra) in enumerate(variants):
            clone = prepared_clone(rev, Path(tmp) / str(index), env, args.cells)
            variant_env = {**env, **extra}
            wall, stages = timed_repro(clone, variant_env)
            cells = len(yaml.safe_load((clone / "params.yaml").read_text())["cells"])
            figure = {"rev": run(["git", "rev-parse", "--short", "HEAD"], clone, env).stdout.strip(),
                      "wall_s": wall, "stages": stages, "cells": cells, "per_cell_s": wall / cells}
            if rev == "HEAD":
                figure["parts_s"] = stage_parts(clone, variant_env, cells, wall)
            figures[label] = figure
    for label, figure in figures.items():
        print(f"{label} ({figure['rev']}): smoke profile, {figure['cells']} cells, {figure['stages']} stages: "
              f"{figure['wall_s']:.1f} s wall, {figure['per_cell_s']:.2f} s per cell")
        for name, seconds in figure.get("parts_s", {}).items():
            print(f"  {name:<66} {seconds:7.1f} s  {seconds / figure['cells']:5.2f} s/cell")
    for label in figures:
        if label != "HEAD":
            print(f"ratio {label} / HEAD: {figures[label]['wall_s'] / figures['HEAD']['wall_s']:.2f}")
    print(json.dumps(figures))


def epoch_seconds(record: dict) -> float:
    """Each epoch's wall seconds, once per cell (all of a cell's runs share an epoch)."""
    per_epoch: dict[int, float] = {}
    for run_record in record["runs"]:
        for row in run_record["history"]:
            per_epoch[row["epoch"]] = row["seconds"]
    return sum(per_epoch.values())


def log_wall(logs: list[Path]) -> float | None:
    """The study's wall seconds from scripts/publish_study.sh's logs, one per session.

    Each "== <time> <step>" line opens a step that the next one closes; a step that no
    line closes (the session ended mid-cell) is left out, since the next session trained
    that cell again from the start and its log counts that. Gaps between sessions are not
    wall time of the study.
    """
    total, closed = 0.0, 0
    for log in logs:
        stamps = [datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
                  for m in re.finditer(r"^== (\S+Z) ", log.read_text(), re.M)]
        total += sum((b - a).total_seconds() for a, b in zip(stamps, stamps[1:]))
        closed += max(0, len(stamps) - 1)
    return total if closed else None


def efficiency(args) -> None:
    records_dir = Path(args.records)
    records = [json.loads(p.read_text()) for p in sorted(records_dir.glob("*.json"))]
    if not records:
        raise SystemExit(f"{records_dir}: no records; run the study first")
    epochs = sum(epoch_seconds(r) for r in records)
    stages = sum(r["seconds"] for r in records)
    model_epochs = sum(len(run_record["history"]) for r in records for run_record in r["runs"])
    wall = log_wall([Path(log) for log in args.log]) if args.log else None
    print(f"{len(records)} cells, {model_epochs} model-epochs, {epochs:.0f} s in epochs "
          f"({epochs / model_epochs:.3f} s per model-epoch)")
    print(f"in-stage efficiency: epochs / train stage seconds = {epochs:.0f} / {stages:.0f} = {epochs / stages:.3f}")
    if wall:
        print(f"study efficiency: epochs / wall (from {', '.join(args.log)}) = {epochs:.0f} / {wall:.0f} = {epochs / wall:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a git revision to time side by side (e.g. e19841e)")
    parser.add_argument("--mirror", default=str(SHARED_MNIST), help="directory with the MNIST IDX files")
    parser.add_argument("--cold", action="store_true", help="also this commit with MISFIT_WARM=0 (no warm worker)")
    parser.add_argument("--cells", type=int, help="only the first N cells (a quick check of the bench itself)")
    parser.add_argument("--efficiency", action="store_true", help="study efficiency from records/")
    parser.add_argument("--records", default=str(ROOT / "records"), help="the study's records/ (default: this checkout's)")
    parser.add_argument("--log", nargs="+", help="scripts/publish_study.sh's logs (one per session), for the study's wall time")
    args = parser.parse_args()
    efficiency(args) if args.efficiency else smoke(args)


if __name__ == "__main__":
    main()
