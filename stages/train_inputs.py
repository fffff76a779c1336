"""train-inputs: what every train stage shares, in one small file: the md5 of each file of
the train code and the value of each param all cells use.

Each train@<cell> depends on data/train_inputs.json and on its own cells.<cell> params
instead of listing ~20 files and ~40 lines of params itself: dvc.lock holds them once
instead of 42 times, and DVC reads and rewrites the whole dvc.lock after every stage it
runs (bench/overhead.py)."""
from pathlib import Path

from misfit.files import write_json_atomic
from misfit.layout import TRAIN_INPUTS
from misfit.provenance import train_inputs

if __name__ == "__main__":
    root = Path(".")
    write_json_atomic(root / TRAIN_INPUTS, train_inputs(root))
