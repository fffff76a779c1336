"""A tracking store that cannot be used stops the train stage within seconds, before it
trains or writes anything, with the URI or file and what was expected."""
from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
import time

import pytest
from conftest import base_env, free_port, make_project, run, small_params, synthetic_mnist

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = "binary-softmax-ce"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    manifest = synthetic_mnist(tmp / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp / "mirror"), MNIST_MANIFEST=str(manifest))
    root = make_project(tmp / "project", small_params([CELL], protocol__max_epochs=2))
    run(["dvc", "repro", "label-derive", "train-inputs"], root, env)
    return root, env


def train(project, env, **extra) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(["dvc", "repro", "-s", f"train@{CELL}"], cwd=project, env={**env, **extra},
                          capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


def assert_nothing_written(root) -> None:
    assert not (root / "models" / CELL).exists()
    assert not (root / "records" / f"{CELL}.json").exists()
    assert not (root / "metrics" / f"{CELL}.json").exists()


def test_no_server_at_the_uri_is_an_error_within_seconds(project):
    root, env = project
    uri = f"http://127.0.0.1:{free_port()}"
    done, seconds = train(root, env, MLFLOW_TRACKING_URI=uri)
    assert done.returncode != 0 and seconds < 30, seconds
    assert f"MLFLOW_TRACKING_URI={uri}: no MLflow tracking server answered {uri}/health" in done.stderr
    assert "Connection refused" in done.stderr and "Traceback" not in done.stderr
    assert_nothing_written(root)
    assert not (root / "mlruns").exists()


def test_a_server_that_accepts_but_never_answers_times_out(project):
    """A listener that takes the connection and says nothing: the check's own timeout."""
    root, env = project
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        done, seconds = train(root, env, MLFLOW_TRACKING_URI=uri, MISFIT_TRACKING_TIMEOUT="2")
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()
    assert done.returncode != 0 and seconds < 30, seconds
    assert f"no MLflow tracking server answered {uri}/health within 2 s" in done.stderr
    assert_nothing_written(root)


def test_a_bad_timeout_setting_names_the_variable(project):
    root, env = project
    done, _ = train(root, env, MISFIT_TRACKING_TIMEOUT="soon")
    assert "MISFIT_TRACKING_TIMEOUT='soon': expected a positive number of seconds" in done.stderr
    assert_nothing_written(root)


@pytest.mark.parametrize("content", ["not a database", "sqlite-without-mlflow"])
def test_a_store_file_that_is_not_an_mlflow_database_names_the_file(project, content):
    root, env = project
    store = root / "mlruns" / "mlflow.db"
    store.parent.mkdir(exist_ok=True)
    if content == "not a database":
        store.write_bytes(b"this is a note, not a database\n" * 40)
        expected = f"{store.resolve()}: not an SQLite database, so not an MLflow tracking store"
    else:
        store.unlink(missing_ok=True)
        with sqlite3.connect(store) as db:
            db.execute("create table notes (text)")
        expected = f"{store.resolve()}: an SQLite database without MLflow's tables"
    before = store.read_bytes()
    try:
        done, seconds = train(root, env)
        assert done.returncode != 0 and seconds < 30
        assert expected in done.stderr and "move it away" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert store.read_bytes() == before  # untouched
        assert_nothing_written(root)
    finally:
        store.unlink()


def read_only_bind(directory) -> list[str]:
    """A command prefix that runs the rest with `directory` bind-mounted read-only, in a mount
    namespace of its own (nothing outside sees it). Root only: chmod does not stop root."""
    script = f'mount --bind "{directory}" "{directory}" && mount -o remount,ro,bind "{directory}" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]


def test_a_read_only_store_directory_stops_the_stage_with_one_line(project):
    root, env = project
    store = root / "mlruns"
    store.mkdir(exist_ok=True)
    probe = subprocess.run([*read_only_bind(store), "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr.strip()}")
    try:
        started = time.monotonic()
        done = subprocess.run([*read_only_bind(store), "dvc", "repro", "-s", f"train@{CELL}"], cwd=root,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and time.monotonic() - started < 30
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors and errors[0].startswith(f"error: {store}: the MLflow store cannot be written there "
                                               "(Read-only file system)"), done.stderr
        assert "Traceback" not in done.stderr and "sqlalchemy" not in done.stderr.lower()
        assert_nothing_written(root)
        assert list(store.iterdir()) == []  # no store, so no run left RUNNING
    finally:
        store.rmdir()


def test_a_file_in_place_of_the_store_directory_stops_the_stage(project):
    root, env = project
    (root / "mlruns").write_text("")
    try:
        done, seconds = train(root, env)
        assert done.returncode != 0 and seconds < 30, seconds
        assert f"error: {root / 'mlruns'}: a file where the MLflow store's directory" in done.stderr
        assert "Traceback" not in done.stderr
        assert_nothing_written(root)
    finally:
        (root / "mlruns").unlink()


FILL_MID_TRAINING = """
mount -t tmpfs -o size=32m tmpfs mlruns || exit 97
dvc repro -s "train@$1" > stage.out 2> stage.err &
stage=$!
for _ in $(seq 1200); do grep -q " epoch " stage.out && break; sleep 0.05; done
grep -q " epoch " stage.out || { kill $stage; exit 98; }
dd if=/dev/zero of=mlruns/filler bs=64k 2> /dev/null
wait $stage
"""


def test_a_store_whose_disk_fills_mid_training_stops_the_stage_with_one_line(tmp_path):
    """The checks before a stage starts cannot see a store that fails later: here its disk
    fills once training has begun (a tmpfs of its own, in a mount namespace of its own)."""
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest))
    # enough epochs that the stage is still training when the disk fills
    root = make_project(tmp_path / "project", small_params([CELL], protocol__max_epochs=400,
                                                           protocol__patience=400))
    run(["dvc", "repro", "label-derive", "train-inputs"], root, env)
    (root / "mlruns").mkdir()
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", FILL_MID_TRAINING, "sh", CELL],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode == 97:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode not in (0, 98), (done.returncode, done.stderr)
    stderr = (root / "stage.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[0].startswith(f"error: train@{CELL}: the MLflow store sqlite:///"), stderr
    assert "refused a write while the stage ran (database or disk is full)" in errors[0], errors[0]
    assert "Traceback" not in stderr and "sqlalchemy" not in stderr.lower(), stderr
    assert stderr.count("disk is full") == 1, stderr  # said once, by the stage
    assert (root / "stage.out").read_text().count(" epoch ") <= 3  # stopped at the next epoch, not the last
    assert not (root / "records" / f"{CELL}.json").exists()
    assert not (root / "models" / CELL).exists()
