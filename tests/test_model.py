"""Every kept checkpoint is an MLflow Model (misfit.track.model): on a small synthetic project
run for real (DVC + MLflow), a model loaded in a fresh process reproduces its run's recorded
test metric exactly, the registry's misfit-<cell>@best is the best-valid run, `misfit
predict` answers for a run id and a cell, and `misfit restore-runs` attaches the models."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import PUBLISHED_CELLS, copy_of, publish_output, run, write_idx

pytestmark = pytest.mark.slow

CELLS = ["regression-none-mse-zscore", "multilabel-logits-bcelogits"]  # a stored target mean/sd; 4 bits
assert set(CELLS) <= set(PUBLISHED_CELLS)

# loads each model in its own process, scores it on the project's test split as
# misfit.train.targets.CellTargets.per_sample_score does, and prints the scores
SCORE = """
import json, sys
import mlflow.pyfunc, numpy as np, torch
uri, task, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
mlflow.set_tracking_uri(uri)
images = np.load("data/test/test.npz")["images"]
y = torch.from_numpy(np.load("data/test_labels.npz")[task])
scores = {}
for run_id in runs:
    pred = torch.from_numpy(mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(images))
    if task == "regression":
        per_image = (pred.double() - y.double()) ** 2
    else:
        correct = (pred == y).double()
        per_image = correct.mean(dim=-1) if task == "multilabel" else correct
    scores[run_id] = float(per_image.mean())
print(json.dumps(scores))
"""


@pytest.fixture(scope="module")
def project(published, tmp_path_factory):
    """A copy of the session's published study (conftest): a test here re-evaluates a cell."""
    root, env = copy_of(published, tmp_path_factory.mktemp("models") / "project")
    return root, env, publish_output(published)


def store(root) -> str:
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def evaluation(root, cell) -> dict:
    return json.loads((root / "evaluations" / f"{cell}.json").read_text())


def best_valid(root, cell) -> dict:
    """The main draw's run with the best re-scored valid number (lower MSE, higher accuracy)."""
    runs = [r for r in evaluation(root, cell)["runs"] if r["subset_seed"] == 0]
    sign = 1 if cell.startswith("regression") else -1
    return min(runs, key=lambda r: (sign * r["valid"], r["seed"]))


def predict(root, env, *args) -> list:
    return json.loads(run(["misfit", "predict", *args, "--json"], root, env).stdout)


@pytest.mark.parametrize("cell", CELLS)
def test_a_logged_model_reproduces_the_recorded_test_metric_in_a_fresh_process(project, cell):
    root, env, output = project
    runs = evaluation(root, cell)["runs"]
    assert len(runs) == 3  # seeds 0 and 1, and one on the further draw
    task = cell.split("-")[0]
    done = run([sys.executable, "-c", SCORE, store(root), task, *[r["run_id"] for r in runs]], root, env)
    scores = json.loads(done.stdout.splitlines()[-1])
    assert scores == {r["run_id"]: r["test"] for r in runs}  # exactly: same arithmetic, same model
    assert f"{cell}: 3 MLflow model(s) in" in output


def test_a_model_has_a_signature_an_example_and_leaves_its_run_as_train_closed_it(project):
    import mlflow
    from mlflow import MlflowClient

    root, _, _ = project
    client = MlflowClient(store(root))
    mlflow.set_tracking_uri(store(root))
    for cell in CELLS:
        for entry in evaluation(root, cell)["runs"]:
            info = mlflow.models.get_model_info(f"runs:/{entry['run_id']}/model")
            (spec,) = info.signature.inputs.inputs
            assert (spec.type, spec.shape) == (np.dtype("uint8"), (-1, 28, 28))
            assert info.saved_input_example_info is not None
            found = client.get_run(entry["run_id"])
            assert found.info.status == "FINISHED"
            (output,) = found.outputs.model_outputs  # one model, the checkpoint not also a loose file
            assert found.info.end_time <= client.get_logged_model(output.model_id).creation_timestamp
            assert not [a for a in client.list_artifacts(entry["run_id"]) if a.path.endswith(".pt")]


def test_the_registry_names_each_cells_best_valid_run_and_reevaluating_adds_no_version(project):
    from mlflow import MlflowClient

    root, env, _ = project
    client = MlflowClient(store(root))
    for cell in CELLS:
        best = client.get_model_version_by_alias(f"misfit-{cell}", "best")
        assert best.run_id == best_valid(root, cell)["run_id"]
    cell = CELLS[1]
    versions = len(client.search_model_versions(f"name = 'misfit-{cell}'"))
    models = {r["run_id"]: client.get_run(r["run_id"]).outputs.model_outputs for r in evaluation(root, cell)["runs"]}
    run(["dvc", "repro", "-f", "-s", f"evaluate@{cell}"], root, env)
    assert len(client.search_model_versions(f"name = 'misfit-{cell}'")) == versions
    assert client.get_model_version_by_alias(f"misfit-{cell}", "best").run_id == best_valid(root, cell)["run_id"]
    for run_id, outputs in models.items():
        assert client.get_run(run_id).outputs.model_outputs == outputs  # no model logged twice


def test_predict_answers_for_a_run_id_and_for_a_cell(project, tmp_path):
    root, env, _ = project
    cell = CELLS[1]
    images = root / "data" / "test" / "test.npz"
    best = predict(root, env, best_valid(root, cell)["run_id"], str(images))
    n = len(np.load(images)["images"])
    assert len(best) == n and all(len(bits) == 4 and set(bits) <= {0, 1} for bits in best)
    assert predict(root, env, cell, str(images)) == best  # a cell means its registered best
    idx = tmp_path / "images-idx3-ubyte"
    write_idx(idx, np.load(images)["images"])
    assert predict(root, env, cell, str(idx)) == best
    lines = run(["misfit", "predict", CELLS[0], str(images)], root, env).stdout.splitlines()
    assert len(lines) == n and all(np.isfinite(float(line)) for line in lines)  # stroke counts
    missing = run(["misfit", "predict", "0" * 32, str(images)], root, env, check=False)
    assert missing.returncode == 1 and "no model to load" in missing.stderr


def test_restore_runs_into_a_fresh_store_attaches_the_models(project, tmp_path):
    from mlflow import MlflowClient

    root, env, _ = project
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    restored_env = {**env, "MLFLOW_TRACKING_URI": fresh}
    done = run(["misfit", "restore-runs"], root, restored_env)
    n_runs, n_cells = 3 * len(PUBLISHED_CELLS), len(PUBLISHED_CELLS)  # 3 runs a cell (test above)
    assert f"{n_runs} checkpoint(s) attached" in done.stdout and f"{n_runs} of them as MLflow Models" in done.stdout
    assert f"{n_cells} cell(s) with misfit-<cell>@best" in done.stdout
    client = MlflowClient(fresh)
    images = str(root / "data" / "test" / "test.npz")
    for cell in CELLS:
        best = client.get_model_version_by_alias(f"misfit-{cell}", "best")
        original = client.get_run(best.run_id).data.tags["misfit.original_run_id"]
        assert original == best_valid(root, cell)["run_id"]
        assert predict(root, restored_env, best.run_id, images) == predict(root, env, original, images)
