"""Where each stage's inputs and outputs live, relative to the project root."""
from pathlib import Path

RAW_DIR = Path("data/raw")
SPLIT_DIR = Path("data/split")  # each draw's train and valid images; no test image
TEST_DIR = Path("data/test")  # the test images, shared by every draw, apart from what training reads
LABELS_DIR = Path("data/labels")  # each draw's train and valid targets
TEST_LABELS = Path("data/test_labels.npz")
LABEL_SUMMARY = Path("data/label_summary.json")  # the main draw's: small, in git, read by the report
TRAIN_INPUTS = Path("data/train_inputs.json")  # the train code's md5s and the shared params (train-inputs stage)
EVALUATE_INPUTS = Path("data/evaluate_inputs.json")  # the same for the evaluate code (evaluate-inputs stage)
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")
PARAMS_FILE = Path("params.yaml")
RECORDS_DIR = Path("records")  # how each run trained (train@<cell>)
EVALUATIONS_DIR = Path("evaluations")  # what each kept checkpoint scores (evaluate@<cell>)
PREDICTIONS_DIR = Path("predictions")  # each run's per-image test outputs (evaluate@<cell>)
