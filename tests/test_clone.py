"""A clone is enough: audit, browse and plot a published study from what git holds.

The `published` project (conftest) ran a small study on synthetic IDX files and committed
what the repository commits; each test here works in a fresh `git clone` of it: no DVC
cache, no data, no checkpoints, no MLflow store.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import yaml
from conftest import PUBLISHED_CELLS, base_env, fresh_clone, run

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = PUBLISHED_CELLS[0]
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


@pytest.fixture(scope="module")
def clone(published, tmp_path_factory) -> Path:
    root, env = published
    return fresh_clone(root, tmp_path_factory.mktemp("clone") / "clone", env)


@pytest.fixture(scope="module")
def env() -> dict:
    return base_env()  # a new user's: no MLFLOW_TRACKING_URI, no MNIST mirror


def audit_json(clone: Path, env: dict, *args: str) -> dict:
    return json.loads(run(["misfit", "audit", *args, "--json"], clone, env, timeout=300).stdout)


def published_entry(clone: Path) -> dict:
    return json.loads((clone / "reports" / "results.json").read_text())["cells"][CELL]


def record(clone: Path, cell: str = CELL):
    """records/<cell>.json, read by its model (misfit.core.record.TrainRecord)."""
    from misfit.core.record import load_train_record

    return load_train_record(clone / "records" / f"{cell}.json")


def scores(clone: Path, cell: str = CELL) -> dict:
    """evaluations/<cell>.json's runs (EvaluatedRun) by run id: each run's test number."""
    from misfit.core.record import load_evaluation

    return {run.run_id: run for run in load_evaluation(clone / "evaluations" / f"{cell}.json").runs}


def report_run_ids(clone: Path) -> set[str]:
    from misfit.audit.sources import run_ids_in

    return run_ids_in(published_entry(clone))


def assert_close(a: float, b: float) -> None:
    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (a, b)


def test_the_clone_holds_no_cache_no_data_no_store(clone):
    assert not (clone / "mlruns").exists() and not (clone / "data" / "split").exists()
    assert not list(clone.glob("models/*/*.pt"))
    assert (clone / "records" / f"{CELL}.json").is_file() and (clone / "dvc.lock").is_file()


def test_audit_a_cell_from_git_alone(clone, env):
    params = yaml.safe_load((clone / "params.yaml").read_text())
    entry, rec = published_entry(clone), record(clone)
    report = audit_json(clone, env, CELL)
    assert report["traced_from_git"] is True and report["source"] == f"records/{CELL}.json"
    config = report["configuration"]
    assert {k: config["cell"][k] for k in params["cells"][CELL]} == params["cells"][CELL]
    assert config["protocol"] == params["protocol"] and config["data"] == params["data"]
    assert config["seeds"] == params["seeds"]
    assert report["digests"]["cell"] == entry["cell_digest"]
    assert report["data_identity"]["dataset_sha256"] == rec.data["dataset_sha256"]
    # the code md5s are the ones data/train_inputs.json lists, and dvc.lock pins that file for the cell
    pinned = json.loads((clone / "data" / "train_inputs.json").read_text())["md5"]
    assert report["code"]["dvc_lock_md5"] == pinned and report["code"]["dep_md5"] == pinned
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    (listed,) = [d["md5"] for d in lock["train-inputs"]["outs"] if d["path"] == "data/train_inputs.json"]
    assert [d["md5"] for d in lock[f"train@{CELL}"]["deps"] if d["path"] == "data/train_inputs.json"] == [listed]
    # the numbers are the published ones: metrics/<cell>.json's summary, results.json's runs
    summary, published = report["metrics"]["summary"], json.loads((clone / "metrics" / f"{CELL}.json").read_text())
    for key in ("test", "valid_best"):
        assert summary[key]["n"] == published[key]["n"]
        assert_close(summary[key]["mean"], published[key]["mean"])
    rows = {row["run_id"]: row for row in report["metrics"]["seeds"]}
    for listed in entry["runs"]:
        assert (rows[listed["run_id"]]["seed"], rows[listed["run_id"]]["test"]) == (listed["seed"], listed["test"])
    assert report_run_ids(clone) <= {report["mlflow"]["parent_run_id"], *report["mlflow"]["seed_run_ids"].values()}
    # what is not here, each with a way to get it
    missing = {item["what"].split(" ")[0]: item["get"] for item in report["missing"]}
    assert set(missing) == {"data/split/", f"models/{CELL}/:", "the"}  # data, checkpoints, MLflow runs
    assert any("misfit restore-runs" in command for command in missing["the"])
    assert any(command.startswith(f"dvc pull train@{CELL}") for command in missing[f"models/{CELL}/:"])
    assert [d["kind"] for d in report["disagreements"]] == ["commit"]  # the results were committed later
    assert report["reproduce"]["commands"][-1] == f"misfit reproduce {rec.runs[-1].run_id}"
    assert report["reproduce"]["whole_cell"]["commands"][-1] == (
        f"dvc repro --force --single-item train@{CELL} evaluate@{CELL}")


def test_audit_text_says_what_is_here_and_what_is_not(clone, env):
    params = yaml.safe_load((clone / "params.yaml").read_text())
    done = run(["misfit", "audit", CELL], clone, env)
    text = done.stdout
    for expected in (f"audit of {CELL} (matched cell id {CELL}; from records/{CELL}.json)",
                     "traced from git: yes", f"seeds     {params['seeds']}",
                     f"protocol  lr={params['protocol']['lr']}", "(pinned in dvc.lock)",
                     "not in this checkout, and how to get it", "misfit restore-runs", f"dvc pull train@{CELL}",
                     *report_run_ids(clone)):
        assert expected in text, expected


def test_audit_a_run_id_and_a_digest_from_the_report(clone, env):
    entry, rec, scored = published_entry(clone), record(clone), scores(clone)
    seed_runs = {r.run_id: r for r in rec.runs}
    for run_id in report_run_ids(clone):
        report = audit_json(clone, env, run_id[:8])
        assert report["cell"] == CELL and report["matched"] == {"by": "run id", "value": run_id}
        assert report["traced_from_git"] is True
        if run_id in seed_runs:
            (row,) = report["metrics"]["seeds"]
            assert (row["seed"], row["test"], row["run_id"]) == (seed_runs[run_id].seed, scored[run_id].test, run_id)
    by_digest = audit_json(clone, env, entry["cell_digest"][:12])
    assert by_digest["matched"] == {"by": "cell digest", "value": entry["cell_digest"]}
    assert by_digest["seed"] is None
    assert {row["run_id"] for row in by_digest["metrics"]["seeds"]} == {run["run_id"] for run in entry["runs"]}
    config_digest = rec.runs[0].config_digest
    by_config = audit_json(clone, env, config_digest)
    assert (by_config["seed"], by_config["matched"]["by"]) == (rec.runs[0].seed, "config digest")


def test_restore_runs_rebuilds_the_store_and_the_audit_finds_a_report_run_in_it(published, tmp_path, env):
    from mlflow import MlflowClient

    clone = fresh_clone(published[0], tmp_path / "clone", env)
    records = {cell: record(clone, cell) for cell in PUBLISHED_CELLS}
    n_runs = sum(1 + len(r.runs) for r in records.values())
    started = time.monotonic()
    done = run(["misfit", "restore-runs"], clone, env)
    seconds = time.monotonic() - started
    assert f"restored {n_runs} runs of {len(records)} cells" in done.stdout
    assert seconds < 60, f"restore took {seconds:.1f} s"
    client = MlflowClient(f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("misfit").experiment_id
    rec = records[CELL]
    seed = rec.runs[0]
    (restored,) = client.search_runs([experiment], f"tags.`misfit.original_run_id` = '{seed.run_id}'")
    tags = restored.data.tags
    assert tags["misfit.restored"] == "true" and tags["git_commit"] == rec.tags["git_commit"]
    assert tags["cell"] == CELL and tags["seed"] == str(seed.seed) and tags["misfit.level"] == "seed"
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["misfit.original_run_id"] == rec.parent_run_id
    assert restored.data.params["protocol.lr"] == str(rec.protocol["lr"])
    history = client.get_metric_history(restored.info.run_id, f"valid_{rec.metric}")
    # step 0: before the first update (the record's `initial`), then every epoch
    assert [(m.step, m.value) for m in history] == [(h.epoch, h.valid_metric) for h in [seed.initial, *seed.history]]
    assert restored.data.metrics[f"test_{rec.metric}"] == scores(clone)[seed.run_id].test
    assert "model_summary.txt" in [a.path for a in client.list_artifacts(restored.info.run_id)]
    assert {t.key: t.value for t in restored.inputs.dataset_inputs[0].tags}["sha256"] == \
        rec.data["splits"]["train"]["sha256"]
    # the report's run ids resolve in the restored store, through their original ids
    for run_id in report_run_ids(clone):
        report = audit_json(clone, env, run_id)
        assert run_id in report["mlflow"]["restored"], run_id
        assert not [d for d in report["disagreements"] if d["kind"] == "missing_run"]
        assert "the MLflow runs" not in " ".join(item["what"] for item in report["missing"])
    again = run(["misfit", "restore-runs"], clone, env)
    assert "restored 0 runs of 0 cells" in again.stdout and f"{n_runs} runs were already there" in again.stdout


def _clean(done) -> str:
    output = done.stdout + done.stderr
    # DVC's words for a file it could not read ("failed" alone is a metrics column)
    assert not re.search(r"WARNING|ERROR|failed to load|No plots were loaded", output, re.I), output
    return output


def test_dvc_metrics_show_prints_numbers_only(clone, env):
    output = _clean(run(["dvc", "metrics", "show", "--md"], clone, env))
    for cell in PUBLISHED_CELLS:
        assert f"metrics/{cell}.json" in output
    assert "test.mean" in output and "valid_best.mean" in output
    assert not RUN_ID.search(output)  # identities live in records/, not in the metrics


def test_dvc_plots_show_and_diff(clone, env, tmp_path):
    shown = run(["dvc", "plots", "show", "--json"], clone, env)
    assert "errors" not in shown.stdout, shown.stdout
    plots = json.loads(shown.stdout)["data"]
    assert set(plots) == {"reports/plots/learning_curves.csv", "reports/plots/test.csv"}
    for path, (plot,) in plots.items():
        values = plot["content"]["data"]["values"]
        assert {row["cell"] for row in values} == set(PUBLISHED_CELLS), path
    _clean(run(["dvc", "plots", "show", "-o", str(tmp_path / "show")], clone, env))
    assert (tmp_path / "show" / "index.html").is_file()
    branch = run(["git", "rev-parse", "--abbrev-ref", "HEAD"], clone, env).stdout.strip()
    diff = run(["dvc", "plots", "diff", branch, "--json"], clone, env)
    assert "errors" not in diff.stdout, diff.stdout
    for (plot,) in json.loads(diff.stdout)["data"].values():
        assert plot["revisions"] == ["workspace", branch] or sorted(plot["revisions"]) == sorted(
            ["workspace", branch])
    _clean(run(["dvc", "plots", "diff", branch, "-o", str(tmp_path / "diff")], clone, env))


def test_a_broken_record_is_named_with_its_field(published, tmp_path, env):
    clone = fresh_clone(published[0], tmp_path / "clone", env)
    path = clone / "records" / f"{CELL}.json"
    broken = json.loads(path.read_text())
    del broken["cell_digest"]
    path.write_text(json.dumps(broken))
    for command in (["misfit", "audit", CELL], ["misfit", "restore-runs"]):
        done = run(command, clone, env, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"records/{CELL}.json: field cell_digest: Field required" in done.stderr, done.stderr
    for stale in clone.glob("records/*.json"):
        stale.unlink()
    done = run(["misfit", "restore-runs"], clone, env, check=False)
    assert done.returncode == 1 and "no records/*.json to restore from" in done.stderr
    assert not (clone / "mlruns").exists()
