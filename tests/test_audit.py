"""`misfit audit` on a real pipeline run (DVC, MLflow, every stage) over synthetic IDX files.

One small run per module. Tests that change the project (params.yaml, dvc.lock, code,
git history, the MLflow store) put it back before they end, so the others see it as made.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import base_env, run, synthetic_project

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = "regression-none-mse-zscore"  # an MSE: a float that bit-identity is meaningful for
OTHER = "binary-logits-ce"  # with CELL, one cell in each study: the report renders every study
CELLS = [CELL, OTHER]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root, env, _ = synthetic_project(tmp_path_factory.mktemp("audit"), CELLS)
    return root, env


@pytest.fixture
def in_project(project, monkeypatch):
    """The audit's environment, in this process: the project's store and data mirror."""
    root, env = project
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key in ("MNIST_MIRROR", "MNIST_MANIFEST"):
        monkeypatch.setenv(key, env[key])
    return root


def record(root: Path, cell: str = CELL):
    """records/<cell>.json, read by its model (misfit.core.record.TrainRecord)."""
    from misfit.core.record import load_train_record

    return load_train_record(root / "records" / f"{cell}.json")


def scores(root: Path, cell: str = CELL) -> dict:
    """evaluations/<cell>.json's runs (EvaluatedRun) by run id: each run's test number. Every run of
    these cells trains and keeps a checkpoint, so each has one."""
    from misfit.core.record import load_evaluation

    return {run.run_id: run for run in load_evaluation(root / "evaluations" / f"{cell}.json").runs}


def raw_record(root: Path, cell: str = CELL) -> dict:
    """records/<cell>.json as written."""
    return json.loads((root / "records" / f"{cell}.json").read_text())


def main_runs(rec) -> list:
    """The runs on the main data draw (CELL also has one further draw)."""
    return [r for r in rec.runs if r.subset_seed == rec.data["config"]["subset_seed"]]


def audit(root: Path, query: str, seed: int | None = None, draw: int | None = None) -> dict:
    from misfit.audit import audit as run_audit

    return run_audit(root, query, seed, draw)


def cli(root: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["misfit", "audit", *args], root, env, check=check, timeout=300)


def kinds(report: dict) -> list[str]:
    return [d["kind"] for d in report["disagreements"]]


def store_digest(root: Path) -> str:
    return hashlib.sha256((root / "mlruns" / "mlflow.db").read_bytes()).hexdigest()


# -- finding the runs ----------------------------------------------------------------

def test_by_cell_id_prints_config_data_code_metrics_runs_and_commands(project):
    root, env = project
    rec, scored = record(root), scores(root)
    head = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    text = cli(root, env, CELL).stdout
    for expected in (
        f"audit of {CELL} (matched cell id {CELL}",
        "cell      task=regression activation=none loss=mse variant=zscore loss_input=output",
        "protocol  lr=0.001", "max_epochs=3", "data      subset_seed=0 n_train=200 n_valid=100 n_test=100",
        "seeds     [0, 1]", f"cell digest   {rec.cell_digest}",
        f"dataset sha256  {rec.data['dataset_sha256']}",
        *(rec.data["splits"][s]["sha256"] for s in ("train", "valid")),
        f"git commit {head} (dirty: false)", "md5 ", "src/misfit/train/loop.py",
        f"parent run    {rec.parent_run_id}",
        f"git checkout {head}", f"MNIST_MIRROR={env['MNIST_MIRROR']}", f"MNIST_MANIFEST={env['MNIST_MANIFEST']}",
        "dvc repro label-derive train-inputs", f"dvc repro --force --single-item train@{CELL}",
    ):
        assert expected in text, expected
    for run_record in rec.runs:
        assert run_record.run_id in text and repr(scored[run_record.run_id].test) in text
    assert text.split("disagreements between the records and the current tree\n")[1].startswith("  none")


def test_seed_narrows_to_one_run(in_project):
    rec = record(in_project)
    report = audit(in_project, CELL, seed=1)
    seed1 = next(r for r in main_runs(rec) if r.seed == 1)
    test = scores(in_project)[seed1.run_id].test
    assert report["seed"] == 1
    assert [r["seed"] for r in report["metrics"]["seeds"]] == [1]
    assert report["metrics"]["seeds"][0]["test"] == test
    assert report["digests"]["config"] == {"1": seed1.config_digest}
    assert report["reproduce"]["expect"]["test"] == {"1": test}
    # the cell's summary still covers every seed
    assert report["metrics"]["summary"]["test"]["n"] == 2


def test_unknown_seed_and_unknown_query_are_errors(project, in_project):
    from misfit.audit import AuditError

    root, env = project
    done = cli(root, env, CELL, "--seed", "9", check=False)
    assert done.returncode == 1 and "has no seed 9; its runs are seeds [0, 1]" in done.stderr
    for query, message in (("no-such-cell", "is not a cell of params.yaml"),
                           ("abc1234", "at least 8 hex characters"),  # too short to be a prefix
                           ("0" * 12, "starts with '000000000000'")):
        with pytest.raises(AuditError, match=message):
            audit(in_project, query)


def test_by_run_id_parent_child_and_prefix(in_project):
    rec = record(in_project)
    by_parent = audit(in_project, rec.parent_run_id)
    assert (by_parent["cell"], by_parent["seed"], by_parent["matched"]["by"]) == (CELL, None, "run id")
    child = rec.runs[1]
    for query in (child.run_id, child.run_id[:8].upper()):
        report = audit(in_project, query)
        assert (report["cell"], report["seed"]) == (CELL, child.seed)
        assert report["matched"] == {"by": "run id", "value": child.run_id}
        assert report["mlflow"]["seed_run_ids"] == {str(child.seed): child.run_id}
    from misfit.audit import AuditError

    with pytest.raises(AuditError, match="is seed 1 of"):
        audit(in_project, child.run_id, seed=0)


def test_by_digest_prefix(in_project):
    rec = record(in_project)
    seed0 = rec.runs[0]
    report = audit(in_project, seed0.config_digest[:8])
    assert report["matched"] == {"by": "config digest", "value": seed0.config_digest}
    assert (report["cell"], report["seed"]) == (CELL, 0)
    report = audit(in_project, rec.cell_digest)
    assert report["matched"]["by"] == "cell digest" and report["seed"] is None
    assert [(r["subset_seed"], r["seed"]) for r in report["metrics"]["seeds"]] == [(0, 0), (0, 1), (1, 0)]
    further = next(r for r in rec.runs if r.subset_seed == 1)  # the further draw's run
    by_run = audit(in_project, further.run_id)
    assert (by_run["seed"], by_run["draw"]) == (0, 1)
    assert [r["run_id"] for r in by_run["metrics"]["seeds"]] == [further.run_id]
    assert audit(in_project, CELL, seed=0, draw=1)["metrics"]["seeds"] == by_run["metrics"]["seeds"]
    other = record(in_project, OTHER)
    assert audit(in_project, other.cell_digest[:10])["cell"] == OTHER


def test_json_schema(project):
    root, env = project
    rec, scored = record(root), scores(root)
    report = json.loads(cli(root, env, CELL, "--json").stdout)
    assert set(report) == {"query", "matched", "cell", "seed", "draw", "source", "traced_from_git", "configuration",
                           "digests", "data_identity", "code", "metrics", "mlflow", "reproduce", "missing",
                           "disagreements", "notes"}
    assert report["query"] == CELL and report["source"] == f"records/{CELL}.json"
    assert report["traced_from_git"] is False  # the project has run, but committed nothing since
    assert report["missing"] == []  # data, checkpoints and the store are all here
    config = report["configuration"]
    assert config["cell"] == rec.cell and config["protocol"] == rec.protocol
    assert config["data"] == rec.data["config"] and config["seeds"] == [0, 1]
    assert config["experiment"] == "misfit"
    assert report["digests"] == {"cell": rec.cell_digest,
                                 "config": {str(r.seed): r.config_digest for r in main_runs(rec)}}
    assert report["data_identity"] == {"dataset_sha256": rec.data["dataset_sha256"],
                                       "splits": rec.data["splits"], "draws": rec.draws}
    code = report["code"]
    assert code["git_commit"] == rec.tags["git_commit"] and code["git_dirty"] == "false"
    assert code["dep_md5"] == {k.removeprefix("dep.md5."): v for k, v in rec.tags.items()
                               if k.startswith("dep.md5.")} == code["dvc_lock_md5"]
    assert set(code["versions"]) >= {"python", "torch", "mlflow", "dvc"}
    assert code["device"] == "cpu" and code["threads"].isdigit()
    metrics = report["metrics"]
    assert metrics["metric"] == "mse" and metrics["better"] == "lower"
    for row, recorded in zip(metrics["seeds"], rec.runs, strict=True):
        for key in ("seed", "subset_seed", "status", "valid_best", "best_epoch", "epochs_run", "run_id",
                    "config_digest"):
            assert row[key] == getattr(recorded, key), key
        rescored = scored[recorded.run_id]
        assert row["test"] == rescored.test
        # an MSE's outputs are no probabilities: no calibration
        assert row["rescored"] == {"valid_best": rescored.valid, "test": rescored.test,
                                   "matches_record": rescored.matches_record, "calibration": None}
        assert row["rescored"]["matches_record"] is True
    published = json.loads((root / "metrics" / f"{CELL}.json").read_text())
    for key in ("test", "valid_best"):
        assert {k: metrics["summary"][key][k] for k in ("mean", "n")} == {k: published[key][k] for k in ("mean", "n")}
        assert metrics["published"][key] == published[key]
    mlflow = report["mlflow"]
    assert mlflow["tracking_uri"] == f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"
    assert mlflow["experiment_id"] and mlflow["parent_run_id"] == rec.parent_run_id
    reproduce = report["reproduce"]
    assert reproduce["env"]["MNIST_MIRROR"] == env["MNIST_MIRROR"]
    assert reproduce["env"]["OMP_NUM_THREADS"] == rec.tags["threads"]
    assert reproduce["commands"][-len(rec.runs):] == [f"misfit reproduce {r.run_id}" for r in rec.runs]
    whole = reproduce["whole_cell"]["commands"]
    assert whole[0] == f"git checkout {rec.tags['git_commit']}" and "MISFIT_RETRAIN=1" in whole[1]
    assert whole[-1] == f"dvc repro --force --single-item train@{CELL} evaluate@{CELL}"
    assert reproduce["expect"]["test"] == {**{str(r.seed): scored[r.run_id].test for r in main_runs(rec)},
                                           "draw 1 seed 0": scored[rec.runs[-1].run_id].test}
    assert report["disagreements"] == []


# -- disagreements -------------------------------------------------------------------

def test_params_yaml_changed_since_the_run(in_project):
    path = in_project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params["protocol"]["max_epochs"] = 5
    params["seeds"] = [0, 1, 2]
    params["data"]["n_valid"] = 150
    del params["cells"][OTHER]
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        report = audit(in_project, CELL)
        other = audit(in_project, OTHER)  # still found by its record
    finally:
        path.write_text(original)
    assert kinds(report) == ["params"]
    fields = {d["field"]: (d["recorded"], d["current"]) for d in report["disagreements"][0]["fields"]}
    assert fields == {"protocol.max_epochs": (3, 5), "data.n_valid": (100, 150), "seeds": ([0, 1], [0, 1, 2])}
    message = report["disagreements"][0]["message"]
    assert "protocol.max_epochs: recorded 3, params.yaml 5" in message and "seeds" in message
    other_fields = [d["field"] for d in other["disagreements"][0]["fields"]]
    assert other_fields[0] == f"cells.{OTHER}" and other["disagreements"][0]["fields"][0]["current"] == "<absent>"
    assert audit(in_project, CELL)["disagreements"] == []


def test_run_deleted_from_the_store(in_project):
    from mlflow import MlflowClient

    from misfit.track.store import tracking_uri

    rec = record(in_project)
    victim = rec.runs[0].run_id
    client = MlflowClient(tracking_uri(in_project))
    client.delete_run(victim)
    try:
        report = audit(in_project, CELL)
    finally:
        client.restore_run(victim)
    (missing,) = [d for d in report["disagreements"] if d["kind"] == "missing_run"]
    assert missing["run_id"] == victim and missing["state"] == "deleted"
    assert "lifecycle 'deleted'" in missing["message"]
    for source in (f"records/{CELL}.json", "reports/results.json"):
        assert source in missing["message"]
    assert audit(in_project, CELL)["disagreements"] == []


def test_report_names_a_run_the_record_and_the_store_lack(in_project):
    path = in_project / "reports" / "results.json"
    original = path.read_text()
    results = json.loads(original)
    ghost = "f" * 32
    next(r for r in results["cells"][CELL]["runs"] if r["seed"] == 1)["run_id"] = ghost
    path.write_text(json.dumps(results))
    try:
        report = audit(in_project, CELL)
    finally:
        path.write_text(original)
    stale, missing = report["disagreements"]
    assert (stale["kind"], stale["run_ids"]) == ("report", [ghost]) and "the report is stale" in stale["message"]
    assert (missing["kind"], missing["run_id"], missing["state"]) == ("missing_run", ghost, "missing")
    assert "named in reports/results.json)" in missing["message"] and "is not in the MLflow store" in missing["message"]


def test_metrics_file_that_does_not_summarise_the_record(in_project):
    path = in_project / "metrics" / f"{CELL}.json"
    original = path.read_text()
    metrics = json.loads(original)
    metrics["test"]["mean"] += 0.5
    path.write_text(json.dumps(metrics))
    try:
        report = audit(in_project, CELL)
    finally:
        path.write_text(original)
    (stale,) = report["disagreements"]
    assert stale["kind"] == "metrics" and f"metrics/{CELL}.json does not summarise the runs" in stale["message"]


def test_runs_missing_from_another_store(in_project, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    other = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(other).search_experiments()  # an existing, empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    report = audit(in_project, CELL)
    missing = {d["run_id"]: d["state"] for d in report["disagreements"] if d["kind"] == "missing_run"}
    rec = record(in_project)
    assert missing == {run_id: "missing" for run_id in [rec.parent_run_id, *(r.run_id for r in rec.runs)]}
    assert report["mlflow"]["tracking_uri"] == other


def test_missing_runs_are_listed_in_the_records_order_under_any_hash_seed(project, tmp_path):
    """Their order once followed a set's (results.json's run ids), so it changed between
    calls; a further draw's run was labelled only "seed 0"."""
    from mlflow import MlflowClient

    root, env = project
    other = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(other).search_experiments()
    texts = {cli(root, {**env, "MLFLOW_TRACKING_URI": other, "PYTHONHASHSEED": seed}, CELL, check=False).stdout
             for seed in ("0", "1", "2")}
    assert len(texts) == 1
    (text,) = texts
    rec = record(root)
    lines = [line for line in text.splitlines() if "[missing_run]" in line]
    order = [rec.parent_run_id, *(r.run_id for r in rec.runs)]
    assert [next(i for i in order if i in line) for line in lines] == order
    further = [r for r in rec.runs if r.subset_seed != rec.data["config"]["subset_seed"]]
    assert further and all(f"draw {r.subset_seed} seed {r.seed} run {r.run_id}" in text for r in further)


def test_new_commit_since_the_run(in_project):
    env = base_env()
    recorded = record(in_project).tags["git_commit"]
    (in_project / "NOTES.md").write_text("a later change\n")
    run(["git", "add", "NOTES.md"], in_project, env)
    run(["git", "commit", "-q", "-m", "later"], in_project, env)
    head = run(["git", "rev-parse", "HEAD"], in_project, env).stdout.strip()
    try:
        report = audit(in_project, CELL)
    finally:
        run(["git", "reset", "-q", "--hard", recorded], in_project, env)
    assert kinds(report) == ["commit"]
    assert report["disagreements"][0]["recorded"] == recorded and report["disagreements"][0]["head"] == head
    assert f"made at commit {recorded[:12]}, HEAD is {head[:12]}" in report["disagreements"][0]["message"]
    assert "none changed between them" in report["disagreements"][0]["message"]
    assert report["disagreements"][0]["train_files_changed"] == []
    assert report["reproduce"]["whole_cell"]["commands"][0] == f"git checkout {recorded}"


def test_new_commit_that_changes_the_train_code_names_the_file(in_project):
    env = base_env()
    recorded = record(in_project).tags["git_commit"]
    with (in_project / "stages" / "train.py").open("a") as script:
        script.write("# a later edit\n")
    run(["git", "commit", "-q", "-am", "later"], in_project, env)
    try:
        report = audit(in_project, CELL)
    finally:
        run(["git", "reset", "-q", "--hard", recorded], in_project, env)
    commit = [d for d in report["disagreements"] if d["kind"] == "commit"][0]
    assert commit["train_files_changed"] == ["stages/train.py"]
    assert "the train stage's files changed between them: stages/train.py" in commit["message"]
    assert "code" in kinds(report)  # and the md5 check says dvc repro would retrain


def test_run_made_with_uncommitted_params_is_reproduced_with_its_own_values(in_project):
    """A run whose commit holds other params (a dirty tree) gets `dvc exp run -S` with its values."""
    env = base_env()
    rec = record(in_project)
    original = rec.tags["git_commit"]
    path = in_project / "params.yaml"
    text = path.read_text()
    params = yaml.safe_load(text)
    params["protocol"]["max_epochs"] = 5
    params["cells"]["regression-none-mse-raw"] = {**params["cells"].pop(CELL), "variant": "raw"}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-q", "-am", "other params"], in_project, env)
    later = run(["git", "rev-parse", "HEAD"], in_project, env).stdout.strip()
    # as if the run had been made at `later` with the first params.yaml edited in, uncommitted
    record_file = in_project / "records" / f"{CELL}.json"
    record_text = record_file.read_text()
    raw = raw_record(in_project)
    record_file.write_text(json.dumps({**raw, "tags": {**raw["tags"], "git_commit": later}}))
    try:
        report = audit(in_project, CELL)
    finally:
        record_file.write_text(record_text)
        run(["git", "reset", "-q", "--hard", original], in_project, env)
    (at_commit,) = [d for d in report["disagreements"] if d["kind"] == "params_at_commit"]
    fields = {d["field"]: d["current"] for d in at_commit["fields"]}
    assert fields == {f"cells.{CELL}": "<absent>", "protocol.max_epochs": 5}
    cell = ('{task:"regression",activation:"none",loss:"mse",variant:"zscore",loss_input:"output",'
            'outputs:null,seeds:null,draws:true}')
    assert report["reproduce"]["whole_cell"]["commands"][0] == f"git checkout {later}"
    # Hydra's override grammar, as `dvc exp run -S` reads it; `+` adds a key the file lacks
    assert report["reproduce"]["whole_cell"]["commands"][-1] == (
        f"dvc exp run --force -S '+cells.{CELL}={cell}' -S protocol.max_epochs=3 evaluate@{CELL}")
    assert "dvc repro label-derive train-inputs evaluate-inputs" not in report["reproduce"]["whole_cell"]["commands"]


def test_dvc_lock_and_working_tree_code_differ_from_the_run(in_project):
    listed_path, code_path = in_project / "data" / "train_inputs.json", in_project / "src/misfit/train/losses.py"
    listed_text, code_text = listed_path.read_text(), code_path.read_text()
    listed = json.loads(listed_text)
    listed["md5"]["src/misfit/train/model.py"] = "0" * 32
    listed_path.write_text(json.dumps(listed))
    code_path.write_text(code_text + "\n# a later edit\n")
    try:
        report = audit(in_project, CELL)
    finally:
        listed_path.write_text(listed_text)
        code_path.write_text(code_text)
    assert sorted(kinds(report)) == ["code", "dvc_lock"]
    by_kind = {d["kind"]: d for d in report["disagreements"]}
    assert [f["path"] for f in by_kind["dvc_lock"]["files"]] == ["src/misfit/train/model.py"]
    assert by_kind["dvc_lock"]["files"][0]["dvc_lock"] == "0" * 32
    assert [f["path"] for f in by_kind["code"]["files"]] == ["src/misfit/train/losses.py"]
    assert audit(in_project, CELL)["disagreements"] == []


def test_without_its_record_the_store_answers(in_project, tmp_path):
    rec, scored = record(in_project, OTHER), scores(in_project, OTHER)
    moved = tmp_path / "moved"
    (in_project / "records" / f"{OTHER}.json").rename(moved)
    try:
        by_cell = audit(in_project, OTHER)
        by_seed_run = audit(in_project, rec.runs[1].run_id)
    finally:
        moved.rename(in_project / "records" / f"{OTHER}.json")
    for report in (by_cell, by_seed_run):
        assert report["source"] == f"MLflow run {rec.parent_run_id}"
        assert "record" in kinds(report) and "(the file is absent)" in report["disagreements"][0]["message"]
        config = report["configuration"]
        assert (config["cell"], config["protocol"], config["data"], config["seeds"]) == (
            rec.cell, rec.protocol, rec.data["config"], rec.seeds)
        assert report["digests"]["cell"] == rec.cell_digest
        assert report["data_identity"]["dataset_sha256"] == rec.data["dataset_sha256"]
        # the store also holds the test split, which evaluate@ logs; the record, train's splits
        assert {k: v["sha256"] for k, v in report["data_identity"]["splits"].items() if k != "test"} == {
            k: v["sha256"] for k, v in rec.data["splits"].items()}
        assert report["code"]["git_commit"] == rec.tags["git_commit"]
    assert [(r["seed"], r["run_id"], r["test"], r["valid_best"], r["best_epoch"], r["config_digest"])
            for r in by_cell["metrics"]["seeds"]] == [
        (r.seed, r.run_id, scored[r.run_id].test, r.valid_best, r.best_epoch, r.config_digest) for r in rec.runs]
    assert by_seed_run["seed"] == 1 and by_seed_run["matched"]["by"] == "run id"


def test_audit_never_writes_to_the_store(project, in_project, tmp_path, monkeypatch):
    root, env = project
    before = store_digest(root)
    cli(root, env, CELL, "--json")
    assert store_digest(root) == before
    absent = tmp_path / "absent.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{absent}")
    report = audit(in_project, CELL)
    assert not absent.exists()
    assert kinds(report) == []  # an absent store is not a contradiction: it is listed as missing
    (store,) = [m for m in report["missing"] if m["what"].startswith("the MLflow runs")]
    assert f"no MLflow store at {absent}" in store["why"] and "misfit restore-runs" in store["get"][0]
    # the records alone still give the whole answer
    assert report["metrics"]["seeds"][0]["test"] == scores(root)[record(root).runs[0].run_id].test


# -- the printed commands reproduce the number -----------------------------------------

def test_printed_commands_reproduce_the_number_in_a_fresh_clone(project, tmp_path):
    root, env = project
    report = json.loads(cli(root, env, CELL, "--json").stdout)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / "data").exists() and not (clone / "models").exists()
    # the printed lines, as a shell runs them; the environment is only what they export
    # the whole cell through DVC: this study's records are not committed, so `misfit reproduce`
    # (tests/test_reproduce.py) has no run to find in a clone
    script = "set -eu\n" + "\n".join(report["reproduce"]["whole_cell"]["commands"]) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=clone, env=base_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    again, again_scored = record(clone), scores(clone)
    rec, scored = record(root), scores(root)
    remade = {(r.subset_seed, r.seed): r for r in again.runs}
    expected = report["reproduce"]["expect"]["test"]
    for recorded in rec.runs:
        seed = remade[(recorded.subset_seed, recorded.seed)]
        draw, number = recorded.subset_seed, recorded.seed
        key = str(number) if draw == rec.data["config"]["subset_seed"] else f"draw {draw} seed {number}"
        # bit-identical: same data, code, config, seed, thread count
        assert again_scored[seed.run_id].test == scored[recorded.run_id].test == expected[key]
        assert seed.valid_best == recorded.valid_best and seed.best_epoch == recorded.best_epoch
        assert seed.config_digest == recorded.config_digest
    # the clone trained for real: new runs in its own store
    assert again.parent_run_id != rec.parent_run_id
    assert (clone / "mlruns" / "mlflow.db").is_file()


# -- a broken record stops only the audits that need it (issue 24, item 6) ------------

def test_a_truncated_record_stops_only_the_audits_of_its_cell(project, in_project):
    from misfit.audit import AuditError

    root, env = project
    path = root / "records" / f"{OTHER}.json"
    whole = path.read_text()
    rec = record(root)
    path.write_text(whole[: len(whole) // 2])
    try:
        # another cell, by cell id, run id and digest, in text and JSON: the broken record is not read
        assert audit(in_project, CELL)["cell"] == CELL
        assert audit(in_project, rec.runs[0].run_id)["cell"] == CELL
        assert audit(in_project, rec.cell_digest[:10])["cell"] == CELL
        done = cli(root, env, CELL, "--json", check=False)
        assert done.returncode == 0 and json.loads(done.stdout)["cell"] == CELL, done.stderr
        # the broken cell's own audit: one line naming the file
        done = cli(root, env, OTHER, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"error: records/{OTHER}.json: not readable JSON"), done.stderr
        # a search that finds nothing says which record it could not search
        with pytest.raises(AuditError, match=f"not searched: records/{OTHER}.json"):
            audit(in_project, "0" * 12)
    finally:
        path.write_text(whole)
