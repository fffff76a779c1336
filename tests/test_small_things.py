"""Issue 22 item 6 (c): `dvc repro -f download` offline leaves data/raw as it was."""
from __future__ import annotations

import hashlib

import pytest
import yaml
from conftest import REPO, free_port, run, synthetic_project


def test_download_output_is_persistent():
    """Without persist, DVC deletes data/raw before the stage runs (and a failed download
    then leaves nothing); the stage replaces it atomically itself (fetch_raw)."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["download"]
    assert stage["outs"] == [{"data/raw": {"persist": True}}]


def raw_bytes(root) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "data" / "raw").iterdir())}


@pytest.mark.slow
def test_forced_offline_download_fails_in_one_line_and_keeps_data_raw(tmp_path):
    root, env, _ = synthetic_project(tmp_path, ["binary-softmax-ce"], repro=False)
    run(["dvc", "repro", "download"], root, env)
    before = raw_bytes(root)
    assert len(before) == 5  # the four IDX files and manifest.json
    offline = {key: value for key, value in env.items() if key.lower() != "no_proxy" and key != "MNIST_MIRROR"}
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every download is refused
    offline.update(http_proxy=closed, https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed)

    done = run(["dvc", "repro", "-f", "download"], root, offline, check=False)

    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not download MNIST" in errors[0] and "MNIST_MIRROR" in errors[0], done.stderr
    assert raw_bytes(root) == before


def test_the_audit_prints_an_accuracy_exactly_and_as_the_report_does():
    from misfit.audit.render import _num

    assert _num(0.9703333333333334, "accuracy") == "0.9703333333333334 (97.03%)"
    assert _num(0.0586, "mse") == "0.0586" and _num(None, "accuracy") == "-"
