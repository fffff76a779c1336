"""evaluate@<cell>: every kept checkpoint of one cell scored on valid and test (misfit.evaluate).

Run by a warm worker's child where one can be had (misfit.run.warm), else in this process."""
import sys

from misfit.run.warm import run_in_worker

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/evaluate.py <cell id>")
    code = run_in_worker("evaluate", sys.argv[1])
    if code is None:
        from misfit.core.stage import run_stage
        from misfit.evaluate.stage import evaluate_cell

        code = run_stage(evaluate_cell, sys.argv[1])
    sys.exit(code)
