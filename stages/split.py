"""split: the seeded train/valid subset and the test set, with their index lists."""
import sys

from misfit.config import load_params
from misfit.data import write_split
from misfit.layout import RAW_DIR, SPLIT_DIR
from misfit.stage import run_stage


def main() -> None:
    params = load_params()
    write_split(RAW_DIR, SPLIT_DIR, params.data, params.draws.subset_seeds)


if __name__ == "__main__":
    sys.exit(run_stage(main))
