"""Outputs git holds (records, evaluations, metrics) that a stage rewrites.

DVC deletes a stage's outputs before it runs the stage, so a stage that fails, or is
stopped, would leave a committed file deleted from the work tree. A stage takes the
committed content of its git-held outputs when it starts, and puts back any it has not
replaced when it ends without success.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from misfit.core.files import write_text_atomic


def committed_text(root: Path, path: Path) -> str | None:
    """`path` as the last commit holds it; None outside a git checkout or for an untracked file."""
    try:
        done = subprocess.run(["git", "show", f"HEAD:{path.as_posix()}"], cwd=root, capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


class CommittedOutputs:
    """The committed content of a stage's git-held outputs, taken when the stage starts."""

    def __init__(self, root: Path, paths: list[Path]):
        self.root = root
        self.committed = {path: committed_text(root, path) for path in paths}

    def restore(self) -> list[Path]:
        """Write back each committed output the work tree lacks; the paths restored."""
        restored = []
        for path, text in self.committed.items():
            if text is not None and not (self.root / path).exists():
                write_text_atomic(self.root / path, text)
                restored.append(path)
        return restored

    def close_all(self, status: str) -> None:
        """A stop signal's handler (misfit.track.runs.killed_on_signal) calls this on what it
        holds before the process ends: the committed outputs come back then too."""
        self.restore()
