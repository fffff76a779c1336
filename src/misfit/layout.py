"""Where each stage's inputs and outputs live, relative to the project root."""
from pathlib import Path

RAW_DIR = Path("data/raw")
SPLIT_DIR = Path("data/split")
LABELS_DIR = Path("data/labels")
LABEL_SUMMARY = Path("data/label_summary.json")  # the main draw's: small, in git, read by the report
TRAIN_INPUTS = Path("data/train_inputs.json")  # the train code's md5s and the shared params (train-inputs stage)
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")
PARAMS_FILE = Path("params.yaml")
RECORDS_DIR = Path("records")
