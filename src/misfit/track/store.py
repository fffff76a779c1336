"""MLflow's store: where the runs go, and whether it can be used.

The store is `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts`, unless
MLFLOW_TRACKING_URI names another (a shared server, say). A store that cannot be used
stops a stage before it trains or writes anything, naming the URI or file and what to do.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

from misfit.core.errors import TrackingStoreError


def set_env_defaults() -> None:
    """MLflow settings of ours, unless the environment gives its own."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # these machines have no internet
    # MLflow's defaults retry an unanswered request 7 times with backoff (minutes of silence);
    # a server that goes away mid-run should end the stage within seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # Without buffering, MLflow's async logging thread waits on its queue in 1 s polls, and
    # closing a run (which stops that thread) waited out the poll: ~1 s per stage. With it
    # the thread sleeps on an event that closing sets.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")


set_env_defaults()

STORE_DIR = "mlruns"
TIMEOUT_ENV = "MISFIT_TRACKING_TIMEOUT"  # seconds the pre-flight check waits for a server
DEFAULT_TIMEOUT = 5.0
SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"experiments", "runs", "alembic_version"}


def tracking_uri(root: Path) -> str:
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    return f"sqlite:///{(root / STORE_DIR / 'mlflow.db').resolve()}"


def check_timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise TrackingStoreError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


def check_store(uri: str, timeout: float) -> None:
    """Fail in seconds, before anything is trained or written, if the store is unusable."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri.removeprefix("sqlite:///")))


def _check_server(uri: str, timeout: float) -> None:
    import urllib.error
    import urllib.request

    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as answer:
            body = answer.read(64)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingStoreError(
            f"MLFLOW_TRACKING_URI={uri}: no MLflow tracking server answered {health} within "
            f"{timeout:g} s ({reason}). Start `mlflow server` there, or unset MLFLOW_TRACKING_URI "
            f"to use the local store {STORE_DIR}/mlflow.db ({TIMEOUT_ENV} sets the wait)") from None
    if body.strip() != b"OK":
        raise TrackingStoreError(f"MLFLOW_TRACKING_URI={uri}: {health} answered {body[:40]!r}, "
                                 "expected 'OK' from an MLflow tracking server")


def _check_sqlite(path: Path) -> None:
    import sqlite3

    _check_writable(path)
    if not path.exists() or path.stat().st_size == 0:
        return  # MLflow creates the store
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    hint = ("move it away (a new store is made on the next run) or point MLFLOW_TRACKING_URI "
            "at an MLflow store")
    if header != SQLITE_HEADER:
        raise TrackingStoreError(f"{path}: not an SQLite database, so not an MLflow tracking store; {hint}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
    except sqlite3.Error as error:
        raise TrackingStoreError(f"{path}: cannot read it as an SQLite database ({error}); {hint}") from None
    if tables and not MLFLOW_TABLES <= tables:
        raise TrackingStoreError(f"{path}: an SQLite database without MLflow's tables "
                                 f"(missing {sorted(MLFLOW_TABLES - tables)}); {hint}")


def _unwritable(place: Path, error: OSError) -> TrackingStoreError:
    reason = error.strerror or str(error)
    return TrackingStoreError(
        f"{place}: the MLflow store cannot be written there ({reason}); make it writable (a "
        f"read-only mount or disk?), or point MLFLOW_TRACKING_URI at a writable store")


def _check_writable(db: Path) -> None:
    """The store's directory takes new files (the lock, the journal) and the database opens
    for writing; otherwise MLflow fails after the stage started (a read-only mlruns/ gave a
    traceback ending EROFS on mlruns/.init.lock, or hundreds of lines of SQLAlchemy's).

    Nothing is created: the probe is an unnamed temporary file, and a missing store's nearest
    existing parent is probed instead (MLflow makes the directories)."""
    place = db.parent
    while not place.exists() and not place.is_symlink() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise TrackingStoreError(f"{place}: a file where the MLflow store's directory {db.parent} should be; "
                                 "move it away, or point MLFLOW_TRACKING_URI at another store")
    try:
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as error:
        raise _unwritable(place, error) from None
    if db.exists():
        try:
            with open(db, "r+b"):  # opens for writing, changes nothing
                pass
        except OSError as error:
            raise _unwritable(db, error) from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # noqa: SIM115 - the with below closes it
    except OSError as error:  # mlruns/ read-only, or a file: one line instead of a traceback
        raise _unwritable(path, error) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_experiment(root: Path, experiment: str):
    """(client, experiment id), creating the store's schema and the experiment once.

    A fresh SQLite store is created under a file lock: concurrent first use of one
    database breaks MLflow's schema migrations.
    """
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    local = uri.startswith("sqlite:")
    lock = root / STORE_DIR / ".init.lock" if local else None
    with _file_lock(lock) if lock else contextlib.nullcontext():
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        artifacts = (root / STORE_DIR / "artifacts").resolve().as_uri() if local else None
        try:
            return client, client.create_experiment(experiment, artifact_location=artifacts)
        except Exception:  # another worker created it between our look and our create
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return client, found.experiment_id
