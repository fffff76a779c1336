"""Faults that must end in one line naming the file or setting and what to do (issue 24,
item 6): a broken record under the report stage, a store that cannot be written, a UI
port someone else holds. Each ends within 30 s, leaves nothing RUNNING and deletes no
committed file."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import time

import pytest
from conftest import PUBLISHED_CELLS, base_env, copy_of, free_port, run

from misfit.core.errors import TrackingStoreError
from misfit.track.store import check_store, open_experiment

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = "binary-logits-ce"
assert CELL in PUBLISHED_CELLS


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- the report stage and a broken record ---------------------------------------------

def test_a_truncated_record_stops_the_report_and_keeps_the_committed_reports(published, tmp_path):
    root, env = copy_of(published, tmp_path / "project")
    path = root / "records" / f"{CELL}.json"
    whole = path.read_text()
    reports = {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()}
    assert root / "reports" / "report.md" in reports
    path.write_text(whole[: len(whole) // 2])
    try:
        started = time.monotonic()
        done = subprocess.run(["dvc", "repro", "--single-item", "report"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and time.monotonic() - started < 30
        line = one_error_line(done.stderr)
        assert f"records/{CELL}.json" in line and "not readable JSON" in line, line
        after = {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()}
        assert after == reports  # nothing deleted, nothing half-written
        status = run(["git", "status", "--porcelain", "--", "reports"], root, env).stdout
        assert status == "", status
    finally:
        path.write_text(whole)


# -- a tracking store that cannot be written -------------------------------------------

def test_a_read_only_store_directory_is_named_before_anything_is_made(tmp_path, monkeypatch):
    """Read-only simulated by os.open failing with EROFS (we run as root: chmod does not stop root)."""
    store = tmp_path / "mlruns"
    store.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(store)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(TrackingStoreError) as caught:
        check_store(f"sqlite:///{store / 'mlflow.db'}", 5.0)
    message = str(caught.value)
    assert message.startswith(f"{store}:") and "Read-only file system" in message
    assert "MLFLOW_TRACKING_URI" in message and "\n" not in message
    assert list(store.iterdir()) == []


def test_a_file_where_the_store_directory_should_be_is_named(tmp_path, monkeypatch):
    (tmp_path / "mlruns").write_text("not a directory")
    with pytest.raises(TrackingStoreError) as caught:
        check_store(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", 5.0)
    assert str(caught.value).startswith(f"{tmp_path / 'mlruns'}: a file where")
    # open_experiment (the report's and evaluate's way in) names the lock instead of a traceback
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingStoreError) as caught:
        open_experiment(tmp_path, "misfit")
    assert str(caught.value).startswith(f"{tmp_path / 'mlruns' / '.init.lock'}:")


def test_a_read_only_database_file_is_named(tmp_path, monkeypatch):
    store = tmp_path / "mlruns"
    store.mkdir()
    db = store / "mlflow.db"
    db.write_bytes(b"")
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path) == str(db) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    # builtins.open does not go through os.open: make the database refuse through a wrapper
    import builtins
    real_builtin_open = builtins.open

    def builtin_read_only(file, mode="r", *args, **kwargs):
        if str(file) == str(db) and any(c in mode for c in "wa+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_builtin_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", builtin_read_only)
    with pytest.raises(TrackingStoreError) as caught:
        check_store(f"sqlite:///{db}", 5.0)
    assert str(caught.value).startswith(f"{db}:") and "Read-only file system" in str(caught.value)


# -- misfit ui on a port someone else holds --------------------------------------------

def test_ui_on_a_taken_port_exits_non_zero_naming_the_port(tmp_path):
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        started = time.monotonic()
        done = subprocess.run(["misfit", "ui", "--port", str(port), "-C", str(tmp_path)], cwd=tmp_path,
                              env=base_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 30
    line = one_error_line(done.stderr)
    assert f"port {port}" in line and "--port" in line, line
    assert f":{port}" not in done.stdout  # no URL that would open whoever holds the port
    assert not (tmp_path / "mlruns").exists()
