"""train@<cell>: every seed of one cell, recorded in MLflow and models/<cell>.

Run by a warm worker's child where one can be had (misfit.run.warm), else in this process."""
import sys

from misfit.run.warm import run_in_worker

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/train.py <cell id>")
    code = run_in_worker("train", sys.argv[1])
    if code is None:
        from misfit.core.stage import run_stage
        from misfit.train.stage import train_cell

        code = run_stage(train_cell, sys.argv[1])
    sys.exit(code)
