"""A warm worker for the train and evaluate stages: Python, torch, MLflow and misfit started
once per checkout, and each stage a child forked from it.

A smoke-sized cell trains in ~0.3 s, but starting Python and importing torch, MLflow and
torchinfo took 2-4 s of every stage (bench/overhead.py). So `stages/train.py` and
`stages/evaluate.py` ask a warm worker to fork a child that runs the stage with the stage
process's working directory, environment, stdin, stdout and stderr (passed over a Unix
socket), and exit with the child's status. The first stage of a kind starts the worker; it
exits after MISFIT_WARM_IDLE seconds (default 60) without a stage. MISFIT_WARM=0 runs every
stage in its own process, as before; so does any stage that cannot reach a worker (with a
note saying why).

Why a child is the same as a fresh process:
- a worker is keyed by the stage kind (train or evaluate: each worker imports only its own
  stage's code, so each stage runs only the code dvc.yaml lists for it), the checkout, the
  interpreter and its installed packages, the content of every file of the misfit package,
  the environment variables read at import (threads, CUDA, hashing, MLflow), and every
  attribute a forked child inherits besides memory (CPU affinity, umask, resource limits,
  nice, ids, capabilities, namespaces, cgroup, ignored signals: misfit.run.process). The
  stage that starts a worker passes all of them on to it, so a stage that differs in any
  of them starts (and is served by) its own worker;
- the worker only imports: it computes nothing and opens no store before it forks, so a
  child inherits no thread pool, RNG state or connection;
- tests/test_warm.py and tests/test_warm_attributes.py train a cell both ways and compare.
The stage process stays the one DVC sees: its pid is the runs' `misfit.pid` tag (the
child's is `misfit.worker_pid`). A signal to it is sent to the worker as a message, and the
worker signals its own child; if the stage dies the worker sends the child SIGTERM; if the
worker dies its children get SIGTERM (parent-death signal), and the stage waits for its
child to end before it exits.

What is trusted: only a socket directory that is ours (lstat: not a symlink, our uid, no
access for group or others), lock and log files that are not symlinks, and a peer on the
socket whose uid is ours (SO_PEERCRED, checked by both sides). Anything else is refused
with a note, and the stage runs in its own process.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from misfit.run.channel import (
    FORWARDED_SIGNALS,
    PACKAGE_DIR,
    STAGES,
    WarmUnavailable,
    check_peer,
    open_private,
    read_line,
    send_request,
    socket_dir,
    worker_key,
)

ENABLED_ENV = "MISFIT_WARM"
START_TIMEOUT_S = 60.0  # a cold start imports torch from a cold disk cache
CHILD_END_TIMEOUT_S = 60.0  # a child closing its runs after its worker died (its grace is 30 s)


# -- the stage's side

def run_in_worker(kind: str, cell_id: str) -> int | None:
    """The stage's exit code, run by a warm worker; None: run it in this process."""
    if os.environ.get(ENABLED_ENV, "1") == "0":
        return None
    try:
        sock = _connect_or_start(kind, Path.cwd())
    except (WarmUnavailable, OSError) as why:
        print(f"note: no warm worker ({why}); {kind}@{cell_id} runs in its own process", file=sys.stderr)
        return None
    with sock:
        ended, holder = os.pipe()  # the child holds `holder`: EOF on `ended` means it is gone
        request = {"kind": kind, "cell": cell_id, "cwd": os.getcwd(), "env": dict(os.environ),
                   "stage_pid": os.getpid()}
        try:
            send_request(sock, request, [0, 1, 2, holder])
        finally:
            os.close(holder)
        return _wait_for_child(sock, ended)


def _wait_for_child(sock: socket.socket, ended: int) -> int:
    def forward(signum, frame):
        # a message, not a kill(): the worker signals its own child, so the stage never
        # sends a signal to a pid someone else named
        with contextlib.suppress(OSError):
            sock.sendall(f"signal {signum}\n".encode())

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    reader = sock.makefile("r")
    message = read_line(reader)
    if message is not None and message[0] == "exit":
        value = message[1]
        return value if value >= 0 else 128 - value  # killed by a signal: as a shell reports it
    # the worker died: its child got SIGTERM (parent-death signal) and closes its runs;
    # wait for it, so that nothing of this stage runs (or prints) after the stage ends
    waited = _wait_for_eof(ended, CHILD_END_TIMEOUT_S)
    print("error: the warm worker ended without the stage's exit status"
          + ("" if waited else f"; its child still ran after {CHILD_END_TIMEOUT_S:g} s"), file=sys.stderr)
    return 1


def _wait_for_eof(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                if not os.read(fd, 4096):
                    return True
    return False


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    try:
        check_peer(sock, f"process listening on {path}")  # before a byte of ours goes out
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_or_start(kind: str, root: Path) -> socket.socket:
    if kind not in STAGES:
        raise WarmUnavailable(f"unknown stage kind {kind!r}; expected one of {sorted(STAGES)}")
    key = worker_key(root, dict(os.environ), kind)
    directory = socket_dir()
    path = directory / f"{key}.sock"
    sock = _connect(path)
    if sock:
        return sock
    lock = open_private(directory / f"{key}.lock")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one start per key, however many stages race for it
        sock = _connect(path)
        if sock:
            return sock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead worker's socket
        return _start_worker(kind, root, key, path, directory / f"{key}.log")
    finally:
        os.close(lock)


def _start_worker(kind: str, root: Path, key: str, path: Path, log: Path) -> socket.socket:
    # the stage's own environment and process attributes (part of the key); this package's
    # directory goes on sys.path by argument, so PYTHONPATH stays what the stage had
    boot = "import sys; sys.path.insert(0, sys.argv[1]); from misfit.run.worker import main; main(sys.argv[2:])"
    out = open_private(log, truncate=True)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", boot, str(PACKAGE_DIR.parent), kind, str(root.resolve()), key, str(path)],
            cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # not in DVC's process group: a Ctrl-C there is forwarded, not shared
        )
    finally:
        os.close(out)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock:
            print(f"note: started a warm {kind} worker (pid {process.pid}) for {root.resolve()}; "
                  f"{ENABLED_ENV}=0 runs each stage in its own process", file=sys.stderr)
            return sock
        if process.poll() is not None:
            raise WarmUnavailable(f"it exited with {process.returncode}: {_tail(log)}")
        time.sleep(0.05)
    process.kill()
    raise WarmUnavailable(f"it did not listen within {START_TIMEOUT_S:g} s: {_tail(log)}")


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-3:]) or f"nothing in {log}"


