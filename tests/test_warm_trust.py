"""Issue 24, item 2: the warm worker's socket directory, its files and its peers are trusted
only when they are ours. Another user is simulated (the tests run as root): a directory
chowned to uid 65534, one of mode 0777, a symlink to a 1777 directory, symlinked lock and
log files, and a listener that dropped to uid 65534 before listen(). Each is refused with a
line naming it, the stage runs in its own process and succeeds, and nothing is touched."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import run  # noqa: F401
from test_warm import CELL, small, sockets  # noqa: F401

from misfit.run import worker

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

NOBODY = 65534


@pytest.fixture
def base():
    # short: a Unix socket's path is limited to 107 bytes
    directory = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


def train(root: Path, env: dict, base: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "stages/train.py", CELL], cwd=root, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": "src", "XDG_RUNTIME_DIR": str(base)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "runs in its own process" in done.stderr and "started a warm" not in done.stderr, done.stderr
    return done


def key_of(root: Path, env: dict, base: Path) -> str:
    """The key train.py computes there: from a process started the same way."""
    code = "import os; from pathlib import Path; from misfit.run.channel import worker_key; " \
           "print(worker_key(Path.cwd(), dict(os.environ), 'train'))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                          env={**env, "PYTHONPATH": "src", "XDG_RUNTIME_DIR": str(base)}).stdout.strip()


def our_dir(base: Path) -> Path:
    directory = base / f"misfit-warm-{os.getuid()}"
    directory.mkdir(mode=0o700)
    return directory


def test_a_directory_open_to_others_is_refused(small, base):
    root, env = small
    directory = our_dir(base)
    directory.chmod(0o777)
    done = train(root, env, base)
    assert f"{directory} has mode 0777; expected a directory (not a symlink) owned by uid 0 with mode 0700" \
        in done.stderr, done.stderr
    assert not list(directory.iterdir())


def test_a_directory_of_another_user_is_refused(small, base):
    root, env = small
    directory = our_dir(base)
    os.chown(directory, NOBODY, NOBODY)
    done = train(root, env, base)
    assert f"{directory} belongs to uid {NOBODY}; expected" in done.stderr, done.stderr
    assert not list(directory.iterdir())


def test_a_directory_that_is_a_symlink_is_refused(small, base):
    root, env = small
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    directory = base / f"misfit-warm-{os.getuid()}"
    directory.symlink_to(shared)
    done = train(root, env, base)
    assert f"{directory} is a symlink; expected" in done.stderr, done.stderr
    assert not list(shared.iterdir())


@pytest.mark.parametrize("suffix", ["lock", "log"])
def test_a_symlinked_lock_or_log_file_is_refused_and_its_target_untouched(small, base, suffix):
    root, env = small
    directory = our_dir(base)
    victim = base / "victim.txt"
    victim.write_text("precious\n")
    key = key_of(root, env, base)
    (directory / f"{key}.{suffix}").symlink_to(victim)
    done = train(root, env, base)
    assert f"{directory / key}.{suffix} is a symlink; expected a regular file of ours" in done.stderr, done.stderr
    assert victim.read_text() == "precious\n"
    assert not (directory / f"{key}.sock").exists()


IMPOSTOR = r"""
import os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
os.setuid(int(sys.argv[2]))  # SO_PEERCRED reports the uid at listen()
listener.listen(1)
print("listening", flush=True)
listener.settimeout(120)
conn, _ = listener.accept()
data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 8)
print(len(data), len(fds), flush=True)
"""


def test_a_worker_socket_of_another_user_gets_nothing_from_the_stage(small, base):
    root, env = small
    directory = our_dir(base)
    path = directory / f"{key_of(root, env, base)}.sock"
    impostor = subprocess.Popen([sys.executable, "-c", IMPOSTOR, str(path), str(NOBODY)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout.readline().strip() == "listening"
        done = train(root, env, base)
        received = impostor.communicate(timeout=30)[0].split()
    finally:
        impostor.kill()
    assert f"the process listening on {path} belongs to uid {NOBODY}; expected uid 0 (ours)" in done.stderr, \
        done.stderr
    assert received == ["0", "0"]  # not a byte of the request, not one of the stage's fds


def test_a_worker_refuses_a_peer_of_another_user(tmp_path, capsys):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s"))
    listener.listen(2)
    with listener, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stranger:
        stranger.connect(str(tmp_path / "s"))
        assert worker._accept(listener, uid=NOBODY) is None  # as if we were uid 65534 and the peer root
        assert stranger.recv(1) == b""  # closed unread
        assert f"connecting process belongs to uid {os.getuid()}; expected uid {NOBODY}" in capsys.readouterr().err
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ours:
            ours.connect(str(tmp_path / "s"))
            accepted = worker._accept(listener)
            assert accepted is not None
            accepted.close()
