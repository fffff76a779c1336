"""Issue 24, item 1: a stage's child from the warm worker has the stage's process attributes
(CPU affinity, umask, resource limits, nice), not those of whichever stage started a worker:
each of them is part of the worker's key, so a stage that differs starts its own worker.
And a worker killed mid-stage takes its child along before the stage ends."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import REPO
from test_warm import CELL, STARTED, LongStage, alive, comparable, long, small, sockets, wait_until  # noqa: F401

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

AFFINITY = {0}
NOFILE = 512


def set_affinity():
    os.sched_setaffinity(0, AFFINITY)


def set_umask():
    os.umask(0o077)


def set_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


NICE = 5


def set_nice():
    os.nice(NICE)


def worker_has_affinity(worker: psutil.Process) -> bool:
    return set(worker.cpu_affinity()) == AFFINITY


def worker_has_umask(worker: psutil.Process) -> bool:
    status = Path(f"/proc/{worker.pid}/status").read_text()
    return "Umask:\t0077" in status


def worker_has_nofile(worker: psutil.Process) -> bool:
    return worker.rlimit(psutil.RLIMIT_NOFILE)[0] == NOFILE


def worker_has_nice(worker: psutil.Process) -> bool:
    return worker.nice() == os.nice(0) + NICE  # above this process's own: the suite may run under nice


ATTRIBUTES = {
    "affinity": (set_affinity, worker_has_affinity),
    "umask": (set_umask, worker_has_umask),
    "rlimit_nofile": (set_nofile, worker_has_nofile),
    "nice": (set_nice, worker_has_nice),
}


def key_under(setup) -> str:
    code = ("import os, sys; from pathlib import Path; from misfit.run.channel import worker_key; "
            "print(worker_key(Path(sys.argv[1]), dict(os.environ)))")
    return subprocess.run([sys.executable, "-c", code, str(REPO)], env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                          preexec_fn=setup, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("name", list(ATTRIBUTES))
def test_each_attribute_is_part_of_the_worker_key(name):
    assert key_under(None) == key_under(None)
    assert key_under(ATTRIBUTES[name][0]) != key_under(None)


def train(root: Path, env: dict, setup=None, **extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "stages/train.py", CELL], cwd=root, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": "src", **extra}, preexec_fn=setup, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def outputs(root: Path) -> tuple[list[dict], dict[str, int]]:
    """What the stage computed, and the mode of each file it wrote."""
    record = root / "records" / f"{CELL}.json"
    files = [record, *sorted((root / "models" / CELL).rglob("*"))]
    modes = {str(path.relative_to(root)): path.stat().st_mode & 0o7777 for path in files if path.is_file()}
    return comparable(json.loads(record.read_text())), modes


@pytest.fixture(scope="module")
def baseline_worker(small):
    """A warm worker started by a stage with no attribute changed, alive through the tests:
    before the fix, every stage below was served by it."""
    root, env = small
    done = train(root, env, MISFIT_WARM_IDLE="600")
    worker = int(STARTED.search(done.stderr).group(1))
    yield worker
    os.kill(worker, signal.SIGTERM)
    wait_until(lambda: not alive(worker))


@pytest.mark.parametrize("name", list(ATTRIBUTES))
def test_a_stage_with_other_attributes_trains_in_a_worker_of_its_own_what_a_fresh_process_trains(
        small, baseline_worker, name):
    root, env = small
    setup, worker_has = ATTRIBUTES[name]
    cold = train(root, env, setup, MISFIT_WARM="0")
    by_itself = outputs(root)
    warm = train(root, env, setup)
    started = STARTED.search(warm.stderr)
    assert started, f"the baseline worker served a stage whose {name} differs:\n{warm.stderr}"
    worker = psutil.Process(int(started.group(1)))
    assert worker.pid != baseline_worker
    assert worker_has(worker), name
    records, modes = outputs(root)
    assert records == by_itself[0]
    assert modes == by_itself[1]
    if name == "umask":
        assert set(modes.values()) == {0o600}, modes
    assert "warm" not in cold.stderr


def test_a_worker_killed_mid_stage_takes_its_child_along_before_the_stage_ends(long):
    running = LongStage(*long)
    running.wait_for_epoch()
    child = running.child()
    worker = psutil.Process(child).ppid()
    os.kill(worker, signal.SIGKILL)
    assert running.process.wait(timeout=90) == 1
    # the stage waited for its child: nothing of the stage runs, or prints, once it has ended
    assert not alive(child)
    running.output += running.process.stdout.read()  # EOF: no process holds the stage's stdout
    # the stage's own last word comes after everything its child printed
    assert "the warm worker ended without the stage's exit status" in running.output.rstrip().splitlines()[-1], \
        running.output
    # the child's SIGTERM (its parent-death signal) closed the runs
    assert wait_until(lambda: {s for s, _ in running.runs().values()} == {"KILLED"}), running.runs()
