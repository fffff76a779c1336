"""A warm worker for the train stage: Python, torch, MLflow and misfit started once per
checkout, and each train stage a child forked from it.

A smoke-sized cell trains in ~0.3 s, but starting Python and importing torch, MLflow and
torchinfo took 2-4 s of every train stage (bench/overhead.py). So `stages/train.py` asks a
warm worker to fork a child that runs the stage with the stage process's working
directory, environment, stdin, stdout and stderr (passed over a Unix socket), and exits
with the child's status. The first train stage of a checkout starts the worker; it exits
after MISFIT_WARM_IDLE seconds (default 60) without a stage. MISFIT_WARM=0 runs every
stage in its own process, as before; so does any stage that cannot reach a worker (with
a note saying why).

Why a child is the same as a fresh process:
- a worker is keyed by the checkout, the interpreter and its installed packages, the
  content of every file of the misfit package, and the environment variables read at
  import (threads, CUDA, hashing, MLflow): a change to any of them gets a new worker;
- the worker only imports: it computes nothing and opens no store before it forks, so a
  child inherits no thread pool, RNG state or connection;
- tests/test_warm.py trains a cell both ways and compares every number.
The stage process stays the one DVC sees: its pid is the runs' `misfit.pid` tag (the
child's is `misfit.worker_pid`), a signal to it is passed on to the child, and if it
dies the worker sends the child SIGTERM, which closes the runs as KILLED.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from pathlib import Path

ENABLED_ENV, IDLE_ENV = "MISFIT_WARM", "MISFIT_WARM_IDLE"
DEFAULT_IDLE_S = 60.0
START_TIMEOUT_S = 60.0  # a cold start imports torch from a cold disk cache
IMPORT_TIME_ENV = ("OMP_", "MKL_", "KMP_", "GOMP_", "CUDA_", "NVIDIA_", "PYTORCH_", "TORCH",
                   "PYTHON", "LD_", "MALLOC_", "GLIBC_", "MLFLOW_")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/misfit
PR_SET_PDEATHSIG = 1


class WarmUnavailable(RuntimeError):
    """No worker could take the stage; it runs in its own process instead."""


def code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def worker_key(root: Path, env: dict[str, str]) -> str:
    """What a worker must share with a stage for the stage's child to be a fresh process's equal."""
    packages = Path(sysconfig.get_paths()["purelib"])
    identity = {
        "root": str(root.resolve()), "python": sys.executable, "version": sys.version,
        "packages_mtime_ns": packages.stat().st_mtime_ns if packages.exists() else None,
        "code": code_digest(),
        "env": sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)),
    }
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


def socket_dir() -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    directory = base / f"misfit-warm-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise WarmUnavailable(f"{directory} belongs to another user")
    return directory


def idle_seconds() -> float:
    text = os.environ.get(IDLE_ENV, str(DEFAULT_IDLE_S))
    try:
        return float(text)
    except ValueError:
        raise WarmUnavailable(f"{IDLE_ENV}={text!r}: expected a number of seconds") from None


# -- messages: a length-prefixed JSON request with the stage's fds 0-2; "pid N" / "exit N" lines back

def _send_request(sock: socket.socket, request: dict) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(sock, [struct.pack("!I", len(body)) + body], [0, 1, 2])


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < 4:
        raise ConnectionError("short request")
    size, body = struct.unpack("!I", data[:4])[0], data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), fds


def _read_line(reader) -> tuple[str, int] | None:
    line = reader.readline()
    if not line:
        return None
    word, value = line.split()
    return word, int(value)


# -- the stage's side

def run_in_worker(cell_id: str) -> int | None:
    """The stage's exit code, run by a warm worker; None: run it in this process."""
    if os.environ.get(ENABLED_ENV, "1") == "0":
        return None
    try:
        sock = _connect_or_start(Path.cwd())
    except (WarmUnavailable, OSError) as why:
        print(f"note: no warm worker ({why}); train@{cell_id} runs in its own process", file=sys.stderr)
        return None
    with sock:
        request = {"cell": cell_id, "cwd": os.getcwd(), "env": dict(os.environ), "stage_pid": os.getpid()}
        _send_request(sock, request)
        return _wait_for_child(sock)


def _wait_for_child(sock: socket.socket) -> int:
    child: list[int] = []
    pending: list[int] = []

    def forward(signum, frame):
        if child:
            _signal_child(child[0], signum)
        else:
            pending.append(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    reader = sock.makefile("r")
    while True:
        message = _read_line(reader)
        if message is None:
            print("error: the warm worker ended without the stage's exit status", file=sys.stderr)
            return 1
        word, value = message
        if word == "pid":
            child.append(value)
            for signum in pending:
                _signal_child(value, signum)
        elif word == "exit":
            return value if value >= 0 else 128 - value  # killed by a signal: as a shell reports it


def _signal_child(pid: int, signum: int) -> None:
    # the child may have ended between its last message and this signal: its exit status
    # is on the way, and the stage reports that
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _connect_or_start(root: Path) -> socket.socket:
    key = worker_key(root, dict(os.environ))
    directory = socket_dir()
    path = directory / f"{key}.sock"
    sock = _connect(path)
    if sock:
        return sock
    with open(directory / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one start per key, however many stages race for it
        sock = _connect(path)
        if sock:
            return sock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead worker's socket
        return _start_worker(root, key, path, directory / f"{key}.log")


def _start_worker(root: Path, key: str, path: Path, log: Path) -> socket.socket:
    # the stage's own environment (part of the key); this package's directory goes on
    # sys.path by argument, so PYTHONPATH stays what the stage had
    boot = "import sys; sys.path.insert(0, sys.argv[1]); from misfit.run.warm import main; main(sys.argv[2:])"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", boot, str(PACKAGE_DIR.parent), str(root.resolve()), key, str(path)],
            cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # not in DVC's process group: a Ctrl-C there is forwarded, not shared
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock:
            print(f"note: started a warm worker (pid {process.pid}) for {root.resolve()}; "
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


# -- the worker's side

def serve(root: Path, key: str, path: Path, idle: float, env: dict[str, str]) -> int:
    """env: the environment the worker started with (importing misfit.track.runs adds to it)."""
    from misfit.core.stage import run_stage
    from misfit.train.stage import train_cell

    _import_what_stages_use()
    # a child's garbage collections would walk (and so copy, page by page) every object
    # the worker imported; frozen, they are left alone
    gc.collect()
    gc.freeze()

    if worker_key(root, env) != key:
        print(f"the code under {PACKAGE_DIR} changed while the worker started", file=sys.stderr)
        return 3
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_name(f"{path.name}.{os.getpid()}")
    listener.bind(str(staging))
    listener.listen(16)
    os.replace(staging, path)  # a stage never finds a socket that does not listen yet
    identity = os.stat(path).st_ino
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # through `finally`: the socket goes too
    signal.signal(signal.SIGHUP, _exit_on_signal)
    ended, wake = os.pipe()  # SIGCHLD writes here: a child's end wakes the loop at once
    os.set_blocking(wake, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake)
    selector.register(ended, selectors.EVENT_READ)
    last_busy = time.monotonic()
    try:
        while children or time.monotonic() - last_busy < idle:
            for ready, _ in selector.select(timeout=1.0):
                if ready.fileobj is listener:
                    _fork_stage(listener, selector, children, lambda cell: run_stage(train_cell, cell),
                                (ended, wake))
                elif ready.fileobj is ended:
                    os.read(ended, 4096)
                else:  # the stage process closed its end: it died, so the child must end too
                    selector.unregister(ready.fileobj)
                    pid = next(p for p, conn in children.items() if conn is ready.fileobj)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            if _reap(children, selector):
                last_busy = time.monotonic()
            if not _still_ours(path, identity) or not root.exists():
                break
    finally:
        if _still_ours(path, identity):
            path.unlink()
    return 0


def _import_what_stages_use() -> None:
    """What the worker is for: the imports a stage would make, once, before any fork.

    Nothing here computes or opens a store: a child must not inherit a thread pool, an RNG
    state or a database connection.
    """
    import importlib

    import torch

    # what a stage imported lazily, found by comparing sys.modules before and after one:
    # the store's modules, SQLite's dialect, torch.save's, and at exit torch._dynamo's
    # compile-time table (0.37 s of tabulate + wcwidth, paid by every process that
    # imported torch._dynamo, which the fused AdamW does)
    for name in ("torchinfo", "mlflow.store.artifact.local_artifact_repo",
                 "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.tracking.sqlalchemy_workspace_store",
                 "sqlalchemy.dialects.sqlite", "alembic.command", "alembic.config", "email.policy",
                 "torch.utils.serialization", "tabulate"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)

    # the first fused AdamW imports ~1 s of torch internals; a zero-size one computes nothing
    torch.optim.AdamW([torch.zeros(0, requires_grad=True)], fused=True)


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _still_ours(path: Path, identity: int) -> bool:
    try:
        return os.stat(path).st_ino == identity
    except FileNotFoundError:
        return False


def _fork_stage(listener, selector, children: dict, run, wakeup: tuple[int, int]) -> None:
    conn, _ = listener.accept()
    try:
        request, fds = _receive_request(conn)
    except (ConnectionError, ValueError, OSError) as error:
        print(f"bad request: {error}", file=sys.stderr, flush=True)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        _child(request, fds, conn, [listener, *children.values()], wakeup, run)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    selector.register(conn, selectors.EVENT_READ)


def _reap(children: dict, selector) -> bool:
    """Report each ended child's status to its stage process; True if any ended."""
    ended = False
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        conn = children.pop(pid, None)
        if conn is None:
            continue
        ended = True
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
        conn.close()
    return ended


def _child(request: dict, fds: list[int], conn: socket.socket, inherited: list[socket.socket],
           wakeup: tuple[int, int], run) -> None:
    """Become the stage: its fds, directory and environment; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sock in inherited:
            sock.close()
        for fd in wakeup:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        with contextlib.suppress(OSError, AttributeError):  # if the worker dies, so does the stage
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from misfit.track.runs import STAGE_PID_ENV, set_env_defaults
        os.environ[STAGE_PID_ENV] = str(request["stage_pid"])
        set_env_defaults()
        conn.sendall(f"pid {os.getpid()}\n".encode())
        conn.close()
        code = run(request["cell"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        import atexit
        atexit._run_exitfuncs()  # what a fresh process runs at its end (MLflow flushes its queue)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> None:
    root, key, path = argv
    sys.exit(serve(Path(root), key, Path(path), idle_seconds(), dict(os.environ)))
