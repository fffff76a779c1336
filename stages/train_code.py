"""train-code: the md5 of every file the train stage runs, in one small file.

Each train@<cell> depends on data/train_code.json instead of listing those ~20 files
itself: dvc.lock holds them once instead of 42 times, and DVC reads and rewrites the whole
dvc.lock after every stage it runs (bench/overhead.py)."""
from pathlib import Path

from misfit.files import write_json_atomic
from misfit.layout import TRAIN_CODE
from misfit.provenance import md5_of_files, train_code_files

if __name__ == "__main__":
    root = Path(".")
    write_json_atomic(root / TRAIN_CODE, {"md5": md5_of_files(root, train_code_files(root))})
