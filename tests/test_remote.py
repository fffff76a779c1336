"""A DVC remote carries the data and the models to a fresh clone, byte for byte.

Git holds the code, params, dvc.lock and the small uncached outputs (records, metrics, report);
the remote holds what DVC caches (data/, models/). A teammate's `git clone` + `dvc pull`
then has a workspace that DVC considers up to date: nothing to retrain. (Cells trained on
several machines meet through the DVC remote's run-cache: tests/test_parallel.py.)
"""
from __future__ import annotations

import hashlib

import pytest
from conftest import assert_pipeline_current, base_env, make_project, run, small_params, synthetic_mnist

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELLS = ["regression-none-mse-zscore", "binary-softmax-ce"]
CACHED = ("data", "models")


# outputs kept in git: the main draw's label summary, the train and evaluate code's md5s and
# shared params (train-inputs, evaluate-inputs stages)
IN_GIT = (".gitignore", "label_summary.json", "train_inputs.json", "evaluate_inputs.json")


def digests(root, top: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / top).rglob("*")) if p.is_file() and p.name not in IN_GIT}


def test_push_then_clone_and_pull_restores_data_and_models(tmp_path):
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest))
    project = make_project(tmp_path / "project", small_params(CELLS, protocol__max_epochs=2))
    run(["dvc", "repro"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-q", "-m", "results"], project, env)

    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], project, env)
    run(["git", "commit", "-q", "-am", "DVC remote"], project, env)
    pushed = run(["dvc", "push"], project, env)
    assert "pushed" in pushed.stdout, pushed.stdout
    cloud = run(["dvc", "status", "--cloud"], project, env)
    assert "Cache and remote 'local' are in sync." in cloud.stdout, cloud.stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    for top in CACHED:  # git alone does not bring them
        assert not digests(clone, top), f"{top}/ came with git"
    before = run(["dvc", "status"], clone, env)
    assert "deleted" in before.stdout, before.stdout

    run(["dvc", "pull"], clone, env)
    for top in CACHED:
        original = digests(project, top)
        assert original, f"nothing under {top}/"
        assert digests(clone, top) == original, top
    for cell in CELLS:
        assert (clone / "models" / cell / "seed0.pt").is_file()
    assert_pipeline_current(clone, env)
