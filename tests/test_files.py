"""Outputs written through a staging dir: a process killed outright inside the block
leaves the output as it was, and the next writer of that output removes the staging dir."""
from __future__ import annotations

import signal
import subprocess
import sys

from conftest import REPO

from misfit.core.files import atomic_dir

KILLED_INSIDE = """
import os, signal, sys
from pathlib import Path
from misfit.core.files import atomic_dir
with atomic_dir(Path(sys.argv[1])) as staging:
    (staging / "half.txt").write_text("half-written")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_next_writer_removes_what_a_killed_one_left(tmp_path):
    final, sibling = tmp_path / "models" / "cell", tmp_path / "models" / ".cell.json.abcdefgh"
    final.mkdir(parents=True)
    (final / "old.txt").write_text("old")
    sibling.mkdir()  # another output's staging dir (`cell.json`): not this output's to remove
    killed = subprocess.run([sys.executable, "-c", KILLED_INSIDE, str(final)],
                            env={"PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [p for p in final.parent.iterdir() if p.name.startswith(".cell.") and p != sibling]
    assert len(left) == 1 and (left[0] / "half.txt").read_text() == "half-written"
    assert [p.name for p in final.iterdir()] == ["old.txt"]  # the output itself is untouched

    with atomic_dir(final) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in final.parent.iterdir()) == [".cell.json.abcdefgh", "cell"]
    assert [p.name for p in final.iterdir()] == ["new.txt"]
