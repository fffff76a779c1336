"""download: the four MNIST IDX files, verified, into data/raw (MNIST_MIRROR: offline copy)."""
import os
import sys
from pathlib import Path

from misfit.data import MIRROR_ENV, fetch_raw
from misfit.layout import RAW_DIR
from misfit.stage import run_stage


def main() -> None:
    mirror = os.environ.get(MIRROR_ENV)
    fetch_raw(RAW_DIR, Path(mirror) if mirror else None)


if __name__ == "__main__":
    sys.exit(run_stage(main))
