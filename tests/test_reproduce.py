"""`misfit reproduce`: one run trained again, bit for bit, beside its committed numbers (issue 22 item 3).

Each test works on its own copy of the session's published study (conftest `published`:
every stage run by DVC, every run logged to MLflow, the results committed).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import PUBLISHED_CELLS, copy_of, run

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = PUBLISHED_CELLS[0]  # regression-none-mse-zscore: an MSE, seeds 0 and 1, draw 1 seed 0
PUBLISHED_OUTPUTS = ("models", "records", "evaluations", "metrics", "predictions", "mlruns")


@pytest.fixture
def project(published, tmp_path):
    return copy_of(published, tmp_path / "project")


def record(root: Path) -> dict:
    return json.loads((root / "records" / f"{CELL}.json").read_text())


def evaluation(root: Path) -> dict:
    return json.loads((root / "evaluations" / f"{CELL}.json").read_text())


def reproduce(root: Path, env: dict, *args: str, out: Path | None = None):
    extra = ["--out", str(out)] if out else []
    return run(["misfit", "reproduce", *args, *extra], root, env, check=False, timeout=600)


def digests(root: Path) -> dict[str, str]:
    """Every file of the published outputs and the MLflow store, by content."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for name in PUBLISHED_OUTPUTS for path in sorted((root / name).rglob("*")) if path.is_file()}


def test_a_run_by_id_is_reproduced_bit_for_bit_touching_nothing_published(project, tmp_path):
    root, env = project
    rec, scored = record(root), evaluation(root)
    seed1 = next(r for r in rec["runs"] if (r["subset_seed"], r["seed"]) == (0, 1))
    test = next(r["test"] for r in scored["runs"] if r["run_id"] == seed1["run_id"])
    before = digests(root)
    out = tmp_path / "scratch"
    done = reproduce(root, env, seed1["run_id"][:12], out=out)
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    assert f"reproducing {CELL} seed 1 (run {seed1['run_id']})" in text
    assert "reproduced: every number equals the record's, bit for bit" in text
    # the committed number beside the new one: the same repr twice on the test line
    (test_line,) = [line for line in text.splitlines() if line.strip().startswith("test mse")]
    assert test_line.count(repr(test)) == 2 and test_line.rstrip().endswith("same")
    assert f"all {1 + len(seed1['history'])} equal bit for bit" in text
    assert "ETA" in text and "at most" in text  # progress per epoch, the bound said as one
    # the new checkpoint is the committed one, byte for byte, in the scratch directory only
    assert hashlib.sha256((out / seed1["checkpoint"]).read_bytes()).hexdigest() == seed1["checkpoint_sha256"]
    assert json.loads((out / "reproduce.json").read_text())["reproduced"] is True
    assert digests(root) == before


def test_changed_params_are_named_and_fail_the_reproduction(project):
    root, env = project
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["protocol"]["lr"] = 0.002
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    run_id = record(root)["runs"][0]["run_id"]
    done = reproduce(root, env, run_id)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "params.yaml differs from the run's: protocol.lr: recorded 0.001, params.yaml 0.002" in done.stdout
    assert "NOT reproduced:" in done.stdout and "valid mse at epoch(s) 1" in done.stdout
    (test_line,) = [line for line in done.stdout.splitlines() if line.strip().startswith("test mse")]
    assert test_line.rstrip().endswith("DIFFERS")


def test_cell_seed_and_draw_pick_that_run(project):
    root, env = project
    on_draw = next(r for r in record(root)["runs"] if r["subset_seed"] == 1)
    done = reproduce(root, env, CELL, "--seed", str(on_draw["seed"]), "--draw", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"reproducing {CELL} seed {on_draw['seed']} on data draw 1 (run {on_draw['run_id']})" in done.stdout


def test_what_cannot_be_reproduced_says_why(project):
    root, env = project
    whole_cell = reproduce(root, env, CELL)
    assert whole_cell.returncode == 2 and "name one run" in whole_cell.stderr
    assert "--seed 0 --draw 1" in whole_cell.stderr
    unknown = reproduce(root, env, CELL, "--seed", "7")
    assert unknown.returncode == 2 and "has no seed 7" in unknown.stderr
    published_dir = reproduce(root, env, CELL, "--seed", "0", out=root / "models" / "x")
    assert published_dir.returncode == 2 and "published outputs" in published_dir.stderr
    shutil.rmtree(root / "data" / "split")
    no_data = reproduce(root, env, CELL, "--seed", "0")
    assert no_data.returncode == 2 and "dvc pull data/split" in no_data.stderr
