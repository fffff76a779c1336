"""What a Dask worker does for one cell: its own clone at the client's commit, `dvc repro`, push.

This module is shipped to the workers by value (cloudpickle), with misfit.run.process, so a
worker runs the client's version of both whatever `misfit` it has installed; they therefore
import only the standard library (and `distributed`, which every worker has; DVC is
imported by the guard). The stage itself runs the clone's code at the commit (dvc.yaml's
PYTHONPATH=src), not the worker's installed code.

A worker keeps one clone per repository URL under its own scratch directory
(`dask worker --local-directory`), made on its first cell and reused for later ones, so
the upstream data stages run (or are pulled) once per worker. Cells on one worker take
turns on the clone (a file lock): two checkouts in one work tree would trample each other.

DVC runs in the guard (GUARD below), not as a function call in the worker's own process:
DVC starts the stage's command as its child with no parent-death signal, so a worker that
died would leave that stage training on alone (and its cell trained twice), and DVC ignores
SIGINT during the command only on a main thread, which a Dask task does not run on. The
guard keeps both for one process: worker -> guard (DVC) -> the stage.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from misfit.run.process import arm_parent_death_signal

TAIL_LINES = 40
ATTEMPT_TOPIC = "misfit-cell-attempt"
OUTPUT_TOPIC = "misfit-cell-output"
LOG_DIR = ".dvc/tmp/misfit-engine"  # ignored by git (DVC's own tmp), per clone

# The guard is the one process between the worker and the stage's shell: it runs DVC (or a
# `python -c` script) in itself, not as a child. Its process group gets SIGINT when the
# worker dies (the worker sets PR_SET_PDEATHSIG on it before exec): DVC, which ignores
# SIGINT while a stage's command runs, waits for the stage, records it as failed and frees
# its locks, and the train stage closes its MLflow runs as KILLED, as on Ctrl-C in a
# terminal. It runs as `python -c` so that it needs nothing installed but DVC.
GUARD = r"""
import os, signal, sys
stopped = []
def stop(signum, frame):
    # once: as a worker's threads end one by one, Linux reparents the guard to the next
    # and sends the parent-death signal again; a second SIGINT could hit the stage while
    # its handler still runs
    if not stopped:
        stopped.append(signum)
        # the whole group: DVC (this process), the shell and the stage, as a terminal's Ctrl-C would
        os.killpg(0, signal.SIGINT)
signal.signal(signal.SIGTERM, stop)
if os.getppid() != int(sys.argv[1]):  # the worker died before the signal was armed
    sys.exit(130)
command = sys.argv[2:]
if command[0] == "dvc":
    try:
        from dvc.cli import main
    except ImportError as error:
        sys.exit(f"this worker's Python ({sys.executable}) cannot import DVC: {error}")
    sys.exit(main(command[1:]))
if command[1:2] == ["-c"]:
    sys.argv = ["-c", *command[3:]]
    exec(compile(command[2], "<misfit script>", "exec"), {"__name__": "__main__"})
    sys.exit(0)
sys.exit(f"the guard runs `dvc ...` or `python -c ...`, not {command[0]}")
"""

# DVC keeps no run-cache entry for a stage that has an output with `cache: false` that is
# not a metric or plot (dvc/stage/__init__.py, Stage.run: run_cache=... not no_cache_outs);
# train@<cell> has one (records/<cell>.json), so `dvc repro --pull` on the client would
# train every cell again (and label-derive has one too). DVC's run-cache itself handles such outputs (StageCache.save
# copies them into the cache), so after a successful repro we save the entry ourselves and,
# on a cluster, push those outputs' objects too (`dvc push --run-cache` pushes the entry
# but only the objects of cached outputs). Runs with the worker's Python, which has DVC.
# Not needed, and a no-op, once every such output is cached (or a metric) in dvc.yaml.
SAVE_RUN_CACHE = r"""
import sys
from dvc.repo import Repo
push, targets = sys.argv[1] == "push", sys.argv[2:]
with Repo(".") as repo:
    # with_deps: an upstream data stage may have such an output too
    stages = {stage.addressing: stage for target in targets
              for stage in repo.stage.collect(target, with_deps=True)}.values()
    uncached = []
    for stage in stages:
        if any(not out.use_cache and not (out.is_metric or out.is_plot) for out in stage.outs):
            repo.stage_cache.save(stage)
            uncached += [out.hash_info for out in stage.outs if not out.use_cache]
    if push and uncached:
        result = repo.cloud.push(uncached)
        if result.failed:
            sys.exit(f"could not push {len(result.failed)} run-cache object(s) of {targets}")
    print(f"run-cache entries saved for {len(stages)} stage(s) with uncached outputs"
          + (f", {len(uncached)} object(s) pushed" if push else ""))
"""


class SetupError(RuntimeError):
    """The worker could not prepare its clone (clone, fetch, checkout, DVC config)."""


class PushError(RuntimeError):
    """Saving or pushing the results failed after the stage succeeded: raised, so that the
    engine retries the cell (the retry finds the stage done and saves and pushes again)."""


def _git(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True)


def _checked(done: subprocess.CompletedProcess, what: str) -> str:
    if done.returncode != 0:
        raise SetupError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout.strip()


def clone_dir(scratch: str, repo_url: str) -> Path:
    return Path(scratch) / "misfit-clones" / hashlib.sha256(repo_url.encode()).hexdigest()[:12]


@contextlib.contextmanager
def clone_lock(clone: Path):
    clone.parent.mkdir(parents=True, exist_ok=True)
    with open(clone.with_name(clone.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_clone(clone: Path, repo_url: str, commit: str, cache_dir: str | None) -> None:
    """The clone exists and has `commit` checked out; DVC's cache is `cache_dir` if given."""
    if not (clone / ".git").is_dir():
        _checked(subprocess.run(["git", "clone", "--quiet", repo_url, str(clone)],
                                capture_output=True, text=True), f"git clone {repo_url}")
    if _git(clone, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        _checked(_git(clone, "fetch", "--quiet", "origin"), f"git fetch {repo_url}")
        if _git(clone, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
            raise SetupError(f"commit {commit} is not in {repo_url}: push it there first (git push)")
    if _git(clone, "rev-parse", "HEAD").stdout.strip() != commit:
        # --force: this clone belongs to the engine; dvc.lock edits of earlier cells of an
        # older commit go, their results are in the DVC cache and remote
        _checked(_git(clone, "checkout", "--quiet", "--force", "--detach", commit), f"git checkout {commit}")
    if cache_dir:  # the embedded local cluster: one DVC cache for the client and every worker
        _checked(subprocess.run(["dvc", "config", "--local", "cache.dir", cache_dir], cwd=clone,
                                capture_output=True, text=True), "dvc config --local cache.dir")


def guarded_command(command: list[str]) -> list[str]:
    return [sys.executable, "-c", GUARD, str(os.getpid()), *command]


def run_logged(command: list[str], clone: Path, env: dict, log: Path, forward) -> tuple[int, list[str]]:
    """Run `command` under the guard with its output in `log`; forward new lines; (code, tail).

    The output goes to a file, not a pipe: when the worker dies, a pipe would have no
    reader left and the stage would die of a broken pipe instead of closing its runs.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log, "a") as out, open(log) as reader:
        reader.seek(0, os.SEEK_END)
        shown = command if command[1:2] != ["-c"] else [Path(command[0]).name, "-c", "<script>", *command[3:]]
        forward(f"$ {' '.join(shown)}")
        process = subprocess.Popen(guarded_command(command), cwd=clone, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True,
                                   preexec_fn=arm_parent_death_signal)  # SIGTERM to the guard: the worker died
        pending = ""
        while True:
            finished = process.poll() is not None
            pending += reader.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                tail.append(line)
                forward(line)
            if finished:
                break
            time.sleep(0.5)
        if pending:
            tail.append(pending)
            forward(pending)
    return process.returncode, list(tail)


def run_cell(cell_id: str, stages: list[str], repo_url: str, commit: str, env_overrides: dict,
             cache_dir: str | None, push: bool, token: str) -> dict:
    """One cell on this worker; a dict with its outcome. A stage that fails is an outcome
    (returned, not raised, so the engine does not retry it); a setup error is raised."""
    from distributed import get_worker

    worker = get_worker()
    clone = clone_dir(worker.local_directory, repo_url)

    def forward(line: str) -> None:
        # to the client's terminal (it subscribes to the topic), through the scheduler
        worker.log_event(OUTPUT_TOPIC, f"[{cell_id}] {line}")

    # the client counts these: a start that follows neither a success nor a raise is the
    # engine rerunning a cell whose worker died under it
    def event(kind: str) -> None:
        worker.log_event(ATTEMPT_TOPIC, {"cell": cell_id, "worker": worker.address, "token": token,
                                         "event": kind})

    event("start")
    try:
        return _run_cell_in_clone(cell_id, stages, repo_url, commit, env_overrides, cache_dir, push,
                                  worker, clone, forward)
    except BaseException:
        event("raised")
        raise


def _run_cell_in_clone(cell_id, stages, repo_url, commit, env_overrides, cache_dir, push, worker,
                       clone, forward) -> dict:
    started = time.perf_counter()
    with clone_lock(clone):
        prepare_clone(clone, repo_url, commit, cache_dir)
        forward(f"on worker {worker.address}, clone {clone} at {commit[:12]}")
        (clone / LOG_DIR).mkdir(parents=True, exist_ok=True)
        log = clone / LOG_DIR / f"{cell_id}.log"
        env = {**os.environ, **env_overrides}
        # not -s: the upstream data stages come along, pulled or run when this clone lacks
        # them (the first cell of a worker), a no-op after that
        repro = ["dvc", "repro", *(["--pull"] if push else []), *stages]
        code, tail = run_logged(repro, clone, env, log, forward)
        if code == 0:
            keep = [[sys.executable, "-c", SAVE_RUN_CACHE, "push" if push else "keep", *stages]]
            if push:
                keep.append(["dvc", "push", "--run-cache", "--with-deps", *stages])
            for command in keep:
                kept, keep_tail = run_logged(command, clone, env, log, forward)
                if kept != 0:
                    raise PushError(f"{command[0] if command[0] == 'dvc' else 'saving the run-cache'} of "
                                    f"{cell_id} on {worker.address} failed ({kept}):\n" + "\n".join(keep_tail))
    return {"cell": cell_id, "returncode": code, "command": " ".join(repro), "tail": tail,
            "worker": worker.address, "seconds": time.perf_counter() - started}
