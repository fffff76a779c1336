"""train@<cell>: every seed of one cell, recorded in MLflow and models/<cell>."""
import sys

from misfit.stage import run_stage
from misfit.train_stage import train_cell

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/train.py <cell id>")
    sys.exit(run_stage(train_cell, sys.argv[1]))
