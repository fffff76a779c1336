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
import gc
import hashlib
import importlib
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from pathlib import Path

from misfit.run.process import arm_parent_death_signal, inherited_attributes

ENABLED_ENV, IDLE_ENV = "MISFIT_WARM", "MISFIT_WARM_IDLE"
DEFAULT_IDLE_S = 60.0
START_TIMEOUT_S = 60.0  # a cold start imports torch from a cold disk cache
CHILD_END_TIMEOUT_S = 60.0  # a child closing its runs after its worker died (its grace is 30 s)
IMPORT_TIME_ENV = ("OMP_", "MKL_", "KMP_", "GOMP_", "CUDA_", "NVIDIA_", "PYTORCH_", "TORCH",
                   "PYTHON", "LD_", "MALLOC_", "GLIBC_", "MLFLOW_")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# the worker's own handlers; a child puts back what the worker started with
WORKER_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/misfit
# module and function of each stage kind; imported by name so that a stage's entry point
# (and so its dvc.yaml deps) takes in only this module, not the other kind's code
STAGES = {"train": ("misfit.train.stage", "train_cell"),
          "evaluate": ("misfit.evaluate.stage", "evaluate_cell")}


class WarmUnavailable(RuntimeError):
    """No worker could take the stage; it runs in its own process instead."""


def code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def worker_key(root: Path, env: dict[str, str], kind: str = "train") -> str:
    """What a worker must share with a stage for the stage's child to be a fresh process's
    equal. Read in the calling process: the stage, and the worker when it starts."""
    packages = Path(sysconfig.get_paths()["purelib"])
    identity = {
        "kind": kind, "root": str(root.resolve()), "python": sys.executable, "version": sys.version,
        "packages_mtime_ns": packages.stat().st_mtime_ns if packages.exists() else None,
        "code": code_digest(),
        "env": sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)),
        "process": inherited_attributes(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def socket_dir() -> Path:
    """This user's socket directory, made if missing; refused unless only we can use it."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    directory = base / f"misfit-warm-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    check_private_dir(directory)
    return directory


def check_private_dir(directory: Path, uid: int | None = None) -> None:
    """A directory anyone else could write, or swap, could hold an impostor's socket or
    symlinks to our files: lstat (a symlink is refused), our uid, no group/other access."""
    uid = os.getuid() if uid is None else uid
    expected = f"expected a directory (not a symlink) owned by uid {uid} with mode 0700"
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise WarmUnavailable(f"{directory} is a symlink; {expected}")
    if not stat.S_ISDIR(info.st_mode):
        raise WarmUnavailable(f"{directory} is not a directory; {expected}")
    if info.st_uid != uid:
        raise WarmUnavailable(f"{directory} belongs to uid {info.st_uid}; {expected}")
    if info.st_mode & 0o077:
        raise WarmUnavailable(f"{directory} has mode {stat.S_IMODE(info.st_mode):04o}; {expected}")


def open_private(path: Path, truncate: bool = False) -> int:
    """An fd for writing our own file in the socket directory; a symlink there is refused
    (O_NOFOLLOW), so nothing outside the directory is ever opened, let alone truncated."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
    try:
        return os.open(path, flags, 0o600)
    except OSError as error:
        if os.path.islink(path):
            raise WarmUnavailable(f"{path} is a symlink; expected a regular file of ours") from None
        raise WarmUnavailable(f"cannot open {path}: {error.strerror}") from None


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (the kernel's record, not the peer's word)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def check_peer(sock: socket.socket, what: str, uid: int | None = None) -> None:
    uid = os.getuid() if uid is None else uid
    found = peer_uid(sock)
    if found != uid:
        raise WarmUnavailable(f"the {what} belongs to uid {found}; expected uid {uid} (ours)")


def idle_seconds() -> float:
    text = os.environ.get(IDLE_ENV, str(DEFAULT_IDLE_S))
    try:
        return float(text)
    except ValueError:
        raise WarmUnavailable(f"{IDLE_ENV}={text!r}: expected a number of seconds") from None


# -- messages: a length-prefixed JSON request with the stage's fds 0-2 and the write end of
# a pipe the child holds until it ends; then "signal N" lines to the worker, "exit N" back

def _send_request(sock: socket.socket, request: dict, fds: list[int]) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(sock, [struct.pack("!I", len(body)) + body], fds)


def _receive_request(conn: socket.socket) -> tuple[dict, list[int], bytes]:
    """The request, its fds, and what the stage sent after it (a signal it forwarded at once)."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
    for fd in fds:
        os.set_inheritable(fd, False)
    if len(data) < 4 or len(fds) != 4:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("short request")
    size, body = struct.unpack("!I", data[:4])[0], data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body[:size]), fds, body[size:]


def _read_line(reader) -> tuple[str, int] | None:
    line = reader.readline()
    if not line:
        return None
    word, value = line.split()
    return word, int(value)


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
            _send_request(sock, request, [0, 1, 2, holder])
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
    message = _read_line(reader)
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
    boot = "import sys; sys.path.insert(0, sys.argv[1]); from misfit.run.warm import main; main(sys.argv[2:])"
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
        request, fds, more = _receive_request(conn)
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
        from misfit.track.runs import STAGE_PID_ENV, set_env_defaults
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
