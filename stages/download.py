"""download: the four MNIST IDX files, verified, into data/raw (MNIST_MIRROR: offline copy)."""
import os
import sys
from pathlib import Path

from misfit.core.layout import RAW_DIR
from misfit.core.stage import run_stage
from misfit.data.mnist import MIRROR_ENV, fetch_raw


def main() -> None:
    mirror = os.environ.get(MIRROR_ENV)
    fetch_raw(RAW_DIR, Path(mirror) if mirror else None)


if __name__ == "__main__":
    sys.exit(run_stage(main))
