#!/usr/bin/env bash
# Train and evaluate the study cell by cell and publish each cell as it lands, so a long
# study survives an interrupted session: its checkpoints and test predictions go to the DVC
# remote (`dvc push`), and its dvc.lock entries, records/<cell>.json,
# evaluations/<cell>.json and metrics/<cell>.json into a git commit.
# Run again (here or in a fresh clone with the same remote) and it resumes: a cell whose
# stage dvc.lock already pins is restored from the remote (`--pull`), not retrained, and a
# cell already published (up to date and committed) is passed over without a DVC call.
#
#   MNIST_MIRROR=<dir> [STUDY_TAG=study-v6] scripts/publish_study.sh [remote]   # remote: a `dvc remote` name
#
# STUDY_TAG names the finished study: an annotated git tag on the report's commit.
set -euo pipefail
cd "$(dirname "$0")/.."
remote=${1:-}
push() { dvc push ${remote:+-r "$remote"} "$@"; }

dvc repro --pull label-derive train-inputs evaluate-inputs
push download split label-derive
git add dvc.lock data/.gitignore data/label_summary.json data/train_inputs.json data/evaluate_inputs.json
git diff --cached --quiet || git commit -q -m "Study: the data stages and the train and evaluate inputs (code md5s, shared params)"
cells=$(python -c 'import yaml; print("\n".join(yaml.safe_load(open("params.yaml"))["cells"]))')
# One `dvc status` for all stages: a resumed study steps over its published cells at once
# instead of paying a DVC start, a push and a git add for each.
stale=$(dvc status --json | python -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
published() {  # DVC has nothing to do for the cell and its results are committed as they are
  ! grep -qxF -e "train@$1" -e "evaluate@$1" <<<"$stale" \
    && [ -z "$(git status --porcelain -- "records/$1.json" "evaluations/$1.json" "metrics/$1.json")" ]
}
for cell in $cells; do
  if published "$cell"; then echo "== $(date -u +%FT%TZ) $cell already published"; continue; fi
  echo "== $(date -u +%FT%TZ) $cell"
  dvc repro --pull --single-item "train@$cell" "evaluate@$cell"
  push "train@$cell" "evaluate@$cell"
  git add dvc.lock models/.gitignore predictions/.gitignore "records/$cell.json" "evaluations/$cell.json" \
    "metrics/$cell.json"
  git diff --cached --quiet || git commit -q -m "Study: $cell"
done
dvc repro report
git add dvc.lock reports  # reports/plots/ included: `dvc plots show` reads it
git diff --cached --quiet || git commit -q -m "Study: the report"
if [ -n "${STUDY_TAG:-}" ]; then git tag -a "$STUDY_TAG" -m "The study as published: every cell and the report"; fi
echo "== $(date -u +%FT%TZ) done"
