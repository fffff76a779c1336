"""evaluate@<cell>: every kept checkpoint of one cell scored on valid and test (misfit.evaluate)."""
import sys

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/evaluate.py <cell id>")
    from misfit.core.stage import run_stage
    from misfit.evaluate.stage import evaluate_cell

    sys.exit(run_stage(evaluate_cell, sys.argv[1]))
