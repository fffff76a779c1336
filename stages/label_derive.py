"""label-derive: the targets of all five tasks for every split (the test split's apart)."""
import sys

from misfit.core.config import load_params
from misfit.core.layout import LABEL_SUMMARY, LABELS_DIR, SPLIT_DIR, TEST_DIR, TEST_LABELS
from misfit.core.stage import run_stage
from misfit.data.labels import write_labels


def main() -> None:
    load_params()  # a broken params.yaml stops every stage, this one included
    write_labels(SPLIT_DIR, LABELS_DIR, TEST_DIR, TEST_LABELS, LABEL_SUMMARY)


if __name__ == "__main__":
    sys.exit(run_stage(main))
