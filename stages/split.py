"""split: each draw's seeded train/valid subset and, apart, the test set, with their index lists."""
import sys

from misfit.core.config import load_params
from misfit.core.layout import RAW_DIR, SPLIT_DIR, TEST_DIR
from misfit.core.stage import run_stage
from misfit.data.split import write_split


def main() -> None:
    params = load_params()
    write_split(RAW_DIR, SPLIT_DIR, TEST_DIR, params.data, params.draws.subset_seeds)


if __name__ == "__main__":
    sys.exit(run_stage(main))
