"""What `misfit run` checks and settles before a cell goes out: the commit the workers check
out, the cells and their stages, the DVC remote and the MLflow store they all reach, the
DVC cache a local cluster shares, and how many threads each stage gets. Each failure is an
EngineError whose message says what to do."""
from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

# what the pipeline rewrites as it runs (outputs, not code): the same rule as the git_dirty run tag
from misfit.core.provenance import PIPELINE_OUTPUTS

TRACKING_ENV = "MLFLOW_TRACKING_URI"
TRACKING_TIMEOUT_S = 5.0
SERVER_SCHEMES = ("http://", "https://")


class EngineError(RuntimeError):
    """Something `misfit run` checks before or while it runs; its message says what to do."""


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    # measured on 2 cores: 2 processes x 1 thread train ~14% faster than 1 x 2 threads,
    # and more threads than cores in total only make the workers wait for each other
    return max(1, (cores or cpu_cores()) // jobs)


def absolute_tracking_uri(uri: str, cwd: Path) -> str:
    """A relative SQLite or file-store location, resolved against the directory we run in.

    Each stage resolves a relative path against its own working directory, which is a
    worker's clone here: the runs would land in a store that only that clone sees.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(cwd / uri.removeprefix('sqlite:///')).resolve()}"
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return (cwd / uri.removeprefix("file:")).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("sqlite:", "file:", "databricks", "/")):
        return (cwd / uri).resolve().as_uri()
    return uri


def _run(command: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=root, capture_output=True, text=True)


def clean_commit(root: Path) -> str:
    """HEAD, if no tracked file but the pipeline's outputs differs from it: the workers
    check out the commit. The same rule as a run's `git_dirty` tag (provenance.git_state;
    not shared with it: provenance.py is a dependency of every train stage)."""
    head = _run(["git", "rev-parse", "HEAD"], root)
    if head.returncode != 0:
        raise EngineError(f"{root} is not a git repository with a commit: the workers check out "
                          f"a commit ({head.stderr.strip()})")
    status = _run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *PIPELINE_OUTPUTS], root)
    changed = [line[3:] for line in status.stdout.splitlines()]
    if changed:
        shown = ", ".join(changed[:8]) + (" …" if len(changed) > 8 else "")
        raise EngineError(
            f"the work tree has uncommitted changes ({shown}): the workers check out commit "
            f"{head.stdout.strip()[:12]} and would not see them. Commit them (a `dvc exp run -S` "
            f"override of params.yaml too) or stash them, then run again.")
    return head.stdout.strip()


def project_params(root: Path):
    """params.yaml through the one validated reader: a broken file stops the run before a cell goes out."""
    from misfit.core.config import ConfigError, load_params

    try:
        return load_params(root / "params.yaml")
    except ConfigError as error:
        raise EngineError(str(error)) from None


def cell_stages(root: Path, cells: list[str]) -> dict[str, list[str]]:
    """Each cell's stages (`train@<cell>`, and any other `<group>@<cell>`), as DVC lists them."""
    listed = _run(["dvc", "stage", "list", "--name-only"], root)
    if listed.returncode != 0:
        raise EngineError(f"`dvc stage list` failed in {root}:\n{listed.stderr.strip()}")
    names = listed.stdout.split()
    stages = {cell: [name for name in names if name.endswith(f"@{cell}")] for cell in cells}
    missing = [cell for cell, found in stages.items() if f"train@{cell}" not in found]
    if missing:
        raise EngineError(f"dvc.yaml has no train@<cell> stage for {', '.join(missing)} "
                          f"(a cell of params.yaml's `cells:`)")
    return stages


def require_dvc_remote(root: Path) -> str:
    """The default DVC remote of the committed .dvc/config: the workers' clones have no other."""
    found = _run(["dvc", "config", "--project", "core.remote"], root)
    if found.returncode != 0 or not found.stdout.strip():
        raise EngineError(
            "a cluster needs a default DVC remote in the committed .dvc/config, which every worker "
            "can reach: the workers push their results there and this command pulls them "
            "(`dvc remote add -d <name> <url>`, then commit .dvc/config)")
    return found.stdout.strip()


def repository_url(root: Path, given: str | None) -> str:
    """Where the cluster's workers clone from: --repo-url, else the `origin` remote."""
    if given:
        return given
    found = _run(["git", "remote", "get-url", "origin"], root)
    if found.returncode != 0:
        raise EngineError("a cluster's workers clone the repository: give --repo-url, or add a git "
                          "remote `origin` that they can reach (and push the commit there)")
    url = found.stdout.strip()
    local = (root / url) if "://" not in url and ":" not in url.split("/")[0] else None
    return str(local.resolve()) if local is not None and local.exists() else url


def tracking_uri_for(root: Path, on_cluster: bool) -> str:
    uri = os.environ.get(TRACKING_ENV)
    if on_cluster:
        if not uri or not uri.startswith(SERVER_SCHEMES):
            raise EngineError(
                f"{TRACKING_ENV} must name an MLflow tracking server (http://host:port) that every "
                f"worker reaches, got {uri or 'nothing (the default local SQLite store)'}: a local "
                f"store would be resolved on each worker's own disk and the runs scattered")
        return uri
    if uri:
        return absolute_tracking_uri(uri, Path.cwd())
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def check_tracking_server(uri: str, timeout: float = TRACKING_TIMEOUT_S) -> None:
    """An HTTP tracking server answers (any HTTP status) within `timeout` seconds."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as error:
        raise EngineError(f"the MLflow tracking server {uri} ({TRACKING_ENV}) did not answer within "
                          f"{timeout:g} s: {getattr(error, 'reason', error)}") from error


def prepare_local_store(root: Path, uri: str, experiment: str) -> None:
    # the store's schema and the experiment exist before N workers reach for them at once
    # (concurrent first use of one SQLite database breaks MLflow's schema migrations)
    from misfit.track.store import open_experiment

    previous = os.environ.get(TRACKING_ENV)
    os.environ[TRACKING_ENV] = uri
    try:
        open_experiment(root, experiment)
    finally:
        if previous is None:
            os.environ.pop(TRACKING_ENV, None)
        else:
            os.environ[TRACKING_ENV] = previous


def dvc_cache_dir(root: Path) -> str:
    found = _run(["dvc", "cache", "dir"], root)
    if found.returncode != 0:
        raise EngineError(f"`dvc cache dir` failed in {root}:\n{found.stderr.strip()}")
    return str(Path(found.stdout.strip()).resolve())
