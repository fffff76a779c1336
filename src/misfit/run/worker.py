"""The warm worker's side (misfit.run.warm is the stage's): imports once, then forks a child
per stage that runs the stage with the stage process's cwd, environment and fds."""
from __future__ import annotations

import contextlib
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from misfit.run.channel import (
    FORWARDED_SIGNALS,
    PACKAGE_DIR,
    STAGES,
    WarmUnavailable,
    check_peer,
    idle_seconds,
    receive_request,
    worker_key,
)
from misfit.run.process import arm_parent_death_signal

# the worker's own handlers; a child puts back what the worker started with
WORKER_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)


# -- the worker's side

def stage_function(kind: str):
    module, name = STAGES[kind]
    return getattr(importlib.import_module(module), name)


def serve(kind: str, root: Path, key: str, path: Path, idle: float, env: dict[str, str],
          dispositions: dict) -> int:
    """env: the environment the worker started with (importing misfit.track.runs adds to it);
    dispositions: its signal handlers then, which a child puts back."""
    from misfit.core.stage import run_stage

    function = stage_function(kind)
    _import_what_stages_use()
    # a child's garbage collections would walk (and so copy, page by page) every object
    # the worker imported; frozen, they are left alone
    gc.collect()
    gc.freeze()

    if worker_key(root, env, kind) != key:
        print(f"this worker's code or process attributes differ from its stage's "
              f"(code under {PACKAGE_DIR} changed while it started?)", file=sys.stderr)
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

    def run(request: dict) -> int:
        if request.get("kind") != kind:
            print(f"error: a {kind} worker was asked for a {request.get('kind')!r} stage", file=sys.stderr)
            return 1
        return run_stage(function, request["cell"])

    try:
        while children or time.monotonic() - last_busy < idle:
            for ready, _ in selector.select(timeout=1.0):
                if ready.fileobj is listener:
                    _fork_stage(listener, selector, children, run, (ended, wake), dispositions)
                elif ready.fileobj is ended:
                    os.read(ended, 4096)
                else:
                    _from_stage(ready.fileobj, selector, children)
            if _reap(children, selector):
                last_busy = time.monotonic()
            if not _still_ours(path, identity) or not root.exists():
                break
    finally:
        if _still_ours(path, identity):
            path.unlink()
    return 0


def _from_stage(conn: socket.socket, selector, children: dict) -> None:
    """A stage's message: a signal to pass on to its child, or its end (then so must the child end)."""
    pid = next(p for p, c in children.items() if c is conn)
    try:
        data = conn.recv(4096)
    except OSError:
        data = b""
    if not data:  # the stage process closed its end: it died
        selector.unregister(conn)
        _signal(pid, signal.SIGTERM)
        return
    _pass_on_signals(data, pid)


def _pass_on_signals(data: bytes, pid: int) -> None:
    for line in data.decode(errors="replace").splitlines():
        word, _, value = line.partition(" ")
        if word == "signal" and value.isdigit() and int(value) in FORWARDED_SIGNALS:
            _signal(pid, int(value))  # our own child: the only pid this worker ever signals


def _signal(pid: int, signum: int) -> None:
    # the child may have ended since: its exit status is on the way, and the stage reports that
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _import_what_stages_use() -> None:
    """What the worker is for: the imports a stage would make, once, before any fork.

    Nothing here computes or opens a store: a child must not inherit a thread pool, an RNG
    state or a database connection.
    """
    import torch

    # what a stage imported lazily, found by comparing sys.modules before and after one:
    # the store's modules, SQLite's dialect, torch.save's, and at exit torch._dynamo's
    # compile-time table (0.37 s of tabulate + wcwidth, paid by every process that
    # imported torch._dynamo, which the fused AdamW does)
    for name in ("torchinfo", "mlflow.store.artifact.local_artifact_repo",
                 "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.tracking.sqlalchemy_workspace_store",
                 "sqlalchemy.dialects.sqlite", "alembic.command", "alembic.config", "email.policy",
                 "torch.utils.serialization", "tabulate",
                 # what the evaluate stage's first model log imports (measured: 44 modules, ~0.9 s a stage)
                 "mlflow.models.display_utils", "mlflow.pyfunc.scoring_server", "mlflow.pyfunc.utils.environment",
                 "mlflow.tracing.export.utils", "mlflow.tracing.processor.otel", "mlflow.tracing.utils.environment",
                 "opentelemetry.sdk.metrics", "opentelemetry.sdk.metrics.export", "email.headerregistry"):
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


def _accept(listener: socket.socket, uid: int | None = None) -> socket.socket | None:
    """The next stage's connection, if it comes from our uid; another user's is closed unread."""
    conn, _ = listener.accept()
    try:
        check_peer(conn, "connecting process", uid)
    except WarmUnavailable as refused:
        print(f"refused: {refused}", file=sys.stderr, flush=True)
        conn.close()
        return None
    return conn


def _fork_stage(listener, selector, children: dict, run, wakeup: tuple[int, int], dispositions: dict) -> None:
    conn = _accept(listener)
    if conn is None:
        return
    try:
        request, fds, more = receive_request(conn)
    except (ConnectionError, ValueError, OSError) as error:
        print(f"bad request: {error}", file=sys.stderr, flush=True)
        conn.close()
        return
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(request, fds, [listener, conn, *children.values()], wakeup, run, dispositions, parent)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    selector.register(conn, selectors.EVENT_READ)
    _pass_on_signals(more, pid)


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


def _child(request: dict, fds: list[int], inherited: list[socket.socket], wakeup: tuple[int, int],
           run, dispositions: dict, parent: int) -> None:
    """Become the stage: its fds, directory and environment; never returns."""
    code = 1
    try:
        # if the worker dies, so does the stage (SIGTERM: its runs close as KILLED); checked
        # after arming, as the worker may have died before
        arm_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)
        signal.set_wakeup_fd(-1)
        for sock in inherited:  # the stage's connection too: its end must see EOF if the worker dies
            sock.close()
        for fd in wakeup:
            os.close(fd)
        for signum, handler in dispositions.items():
            signal.signal(signum, handler)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        # fds[3] stays open until this process ends: the stage's sign that its child is gone
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from misfit.track.runs import STAGE_PID_ENV
        from misfit.track.store import set_env_defaults
        os.environ[STAGE_PID_ENV] = str(request["stage_pid"])
        set_env_defaults()
        code = run(request)
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
    kind, root, key, path = argv
    dispositions = {signum: signal.getsignal(signum) for signum in WORKER_SIGNALS}
    sys.exit(serve(kind, Path(root), key, Path(path), idle_seconds(), dict(os.environ), dispositions))
