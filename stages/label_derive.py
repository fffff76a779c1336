"""label-derive: the targets of all five tasks for every split."""
import sys

from misfit.config import load_params
from misfit.data import write_labels
from misfit.layout import LABEL_SUMMARY, LABELS_DIR, SPLIT_DIR
from misfit.stage import run_stage


def main() -> None:
    load_params()  # a broken params.yaml stops every stage, this one included
    write_labels(SPLIT_DIR, LABELS_DIR, LABEL_SUMMARY)


if __name__ == "__main__":
    sys.exit(run_stage(main))
