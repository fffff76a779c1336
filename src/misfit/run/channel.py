"""The socket between a stage and its warm worker (misfit.run.warm, misfit.run.worker): which
worker a stage may use (its key), where the socket lives, whom each side trusts, and what
goes over it.

What is trusted: only a socket directory that is ours (lstat: not a symlink, our uid, no
access for group or others), lock and log files that are not symlinks, and a peer on the
socket whose uid is ours (SO_PEERCRED, checked by both sides).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import sys
import sysconfig
import tempfile
from pathlib import Path

from misfit.run.process import inherited_attributes

IDLE_ENV = "MISFIT_WARM_IDLE"
DEFAULT_IDLE_S = 60.0
IMPORT_TIME_ENV = ("OMP_", "MKL_", "KMP_", "GOMP_", "CUDA_", "NVIDIA_", "PYTORCH_", "TORCH",
                   "PYTHON", "LD_", "MALLOC_", "GLIBC_", "MLFLOW_")
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/misfit
# module and function of each stage kind; imported by name so that a stage's entry point
# (and so its dvc.yaml deps) takes in only this module, not the other kind's code
STAGES = {"train": ("misfit.train.stage", "train_cell"),
          "evaluate": ("misfit.evaluate.stage", "evaluate_cell")}
# the signals a stage passes on to its child (as a message: the worker signals it)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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

def send_request(sock: socket.socket, request: dict, fds: list[int]) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(sock, [struct.pack("!I", len(body)) + body], fds)


def receive_request(conn: socket.socket) -> tuple[dict, list[int], bytes]:
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


def read_line(reader) -> tuple[str, int] | None:
    line = reader.readline()
    if not line:
        return None
    word, value = line.split()
    return word, int(value)


