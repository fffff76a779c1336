"""train-inputs / evaluate-inputs: what every train@<cell> (evaluate@<cell>) shares, in one
small file: the md5 of each file of that stage's code and the value of each param all
cells use.

Each train@<cell> depends on data/train_inputs.json and on its own cells.<cell> params
instead of listing its code files and ~40 lines of params itself: dvc.lock holds them
once instead of 42 times, and DVC reads and rewrites the whole dvc.lock after every stage
it runs (bench/overhead.py). The same for evaluate@<cell> and data/evaluate_inputs.json.

    python stages/inputs.py train|evaluate
"""
import sys
from pathlib import Path

from misfit.core.files import write_json_atomic
from misfit.core.provenance import INPUTS_FILES, stage_inputs

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in INPUTS_FILES:
        sys.exit(f"usage: python stages/inputs.py {'|'.join(INPUTS_FILES)}")
    root = Path(".")
    write_json_atomic(root / INPUTS_FILES[sys.argv[1]], stage_inputs(root, sys.argv[1]))
