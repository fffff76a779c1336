"""`misfit audit` reads every checkpoint it vouches for: each one present is hashed and
compared with the SHA-256 its record holds (issue 24 item 3).

Each test works on its own copy of the session's published study (conftest `published`:
real DVC and MLflow, synthetic IDX files), so flipping a byte changes no other test's project.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import PUBLISHED_CELLS, copy_of, run

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = PUBLISHED_CELLS[0]  # regression-none-mse-zscore: two seeds and one run on a further draw
EXIT_CHECKPOINT_DIFFERS = 3


@pytest.fixture
def project(published, tmp_path):
    """A copy of the published study: its checkpoints, DVC cache and MLflow store included."""
    return copy_of(published, tmp_path / "project")


def audit(root: Path, env: dict, *args: str):
    return run(["misfit", "audit", CELL, *args], root, env, check=False, timeout=300)


def flip_bytes(path: Path, offset: int = 200, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(b ^ 0xFF for b in data[offset : offset + count])
    path.write_bytes(bytes(data))


def test_intact_checkpoints_are_verified_and_the_audit_exits_0(project):
    root, env = project
    done = audit(root, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing: checkpoints, data and MLflow runs are all here\n" in done.stdout
    assert "sha256 ok" in done.stdout and "DIFFERS" not in done.stdout
    report = json.loads(audit(root, env, "--json").stdout)
    assert {row["checkpoint_check"] for row in report["metrics"]["seeds"]} == {"verified"}
    # the published results were committed after the runs: that commit is the only disagreement
    assert [d["kind"] for d in report["disagreements"]] == ["commit"]


def test_a_flipped_checkpoint_fails_the_audit_naming_the_file_and_both_hashes(project):
    root, env = project
    record = json.loads((root / "records" / f"{CELL}.json").read_text())
    seed0 = next(r for r in record["runs"] if r["checkpoint"] == "seed0.pt")
    path = root / "models" / CELL / "seed0.pt"
    flip_bytes(path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert actual != seed0["checkpoint_sha256"]

    done = audit(root, env)
    assert done.returncode == EXIT_CHECKPOINT_DIFFERS, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("  ! [checkpoint]")]
    assert f"models/{CELL}/seed0.pt" in line and actual in line and seed0["checkpoint_sha256"] in line
    assert "1 checkpoint(s) differ from the record" in done.stdout  # not "all here" and nothing more

    report_run = run(["misfit", "audit", CELL, "--json"], root, env, check=False, timeout=300)
    assert report_run.returncode == EXIT_CHECKPOINT_DIFFERS
    report = json.loads(report_run.stdout)
    (found,) = [d for d in report["disagreements"] if d["kind"] == "checkpoint"]
    assert (found["file"], found["expected"], found["actual"], found["run_id"]) == (
        f"models/{CELL}/seed0.pt", seed0["checkpoint_sha256"], actual, seed0["run_id"])
    checks = {row["checkpoint"]: row["checkpoint_check"] for row in report["metrics"]["seeds"]}
    assert checks == {"seed0.pt": "differs", "seed1.pt": "verified", "subset1-seed0.pt": "verified"}
    # the audit of another seed rests on other files, and passes
    assert audit(root, env, "--seed", "1").returncode == 0


def test_an_absent_checkpoint_is_missing_not_a_disagreement(project):
    root, env = project
    (root / "models" / CELL / "seed1.pt").unlink()
    done = audit(root, env, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [d["kind"] for d in report["disagreements"]] == ["commit"]  # the results' later commit
    (missing,) = [m for m in report["missing"] if m["what"].startswith(f"models/{CELL}/")]
    assert "seed1.pt" in missing["what"] and missing["get"][0].startswith(f"dvc pull train@{CELL}")


def test_a_record_without_checkpoint_hashes_is_noted_not_failed(project):
    root, env = project
    path = root / "records" / f"{CELL}.json"
    record = json.loads(path.read_text())
    for run_record in record["runs"]:
        run_record["checkpoint_sha256"] = None  # as a record written before checkpoints were hashed
    path.write_text(json.dumps(record))
    flip_bytes(root / "models" / CELL / "seed0.pt")  # nothing to compare it with
    done = audit(root, env, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "checkpoint" not in [d["kind"] for d in report["disagreements"]]
    assert any("holds no SHA-256 for 3 checkpoint(s)" in note for note in report["notes"])
