"""evaluate@<cell>: the cell's checkpoints scored again, into metrics/<cell>.json."""
import sys

from misfit.evaluate import evaluate_cell
from misfit.stage import run_stage

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/evaluate.py <cell id>")
    sys.exit(run_stage(evaluate_cell, sys.argv[1]))
