"""Do two trainings of the study agree number for number? records/ here vs records/ at a git revision.

    python scripts/compare_records.py REV [CELL...]

For every cell present in both and trained anew (another MLflow parent run), every run's
computed values are compared exactly: status,
error, best epoch, valid best, test, the re-scoring, the valid pass before the first update
and every epoch of the history. Left out: wall seconds, MLflow run ids, timestamps and tags
(the code's md5s and the commit differ by design). Exit status 1 if any cell differs.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_COMPUTED = {"run_id"}


def computed(record: dict) -> dict:
    runs = {}
    for run in record["runs"]:
        values = {k: v for k, v in run.items() if k not in NOT_COMPUTED | {"history"}}
        values["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in run["history"]]
        runs[(run["subset_seed"], run["seed"])] = values
    return runs


def record_at(rev: str, cell: str) -> dict | None:
    done = subprocess.run(["git", "show", f"{rev}:records/{cell}.json"], cwd=ROOT, capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def differences(old: dict, new: dict) -> list[str]:
    found = []
    for run in sorted(old.keys() | new.keys()):
        if run not in old or run not in new:
            found.append(f"draw {run[0]} seed {run[1]}: only in {'the new' if run in new else 'the old'} record")
            continue
        for key in sorted(old[run].keys() | new[run].keys()):
            if old[run].get(key) != new[run].get(key):
                found.append(f"draw {run[0]} seed {run[1]}: {key} differs")
    return found


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit(__doc__)
    rev, cells = argv[0], argv[1:] or sorted(p.stem for p in (ROOT / "records").glob("*.json"))
    differing, runs, compared = 0, 0, 0
    for cell in cells:
        old = record_at(rev, cell)
        path = ROOT / "records" / f"{cell}.json"
        if old is None or not path.exists():
            print(f"{cell}: not in both (skipped)")
            continue
        new = json.loads(path.read_text())
        if new.get("parent_run_id") == old.get("parent_run_id"):
            print(f"{cell}: the same training in both (parent run {old.get('parent_run_id')}): skipped")
            continue
        old_runs, new_runs = computed(old), computed(new)
        found = differences(old_runs, new_runs)
        compared += 1
        runs += len(new_runs)
        differing += bool(found)
        print(f"{cell}: {'identical' if not found else 'DIFFERS'} ({len(new_runs)} runs)")
        for line in found[:10]:
            print(f"  {line}")
    print(f"{compared} cells compared ({runs} runs): {compared - differing} identical, {differing} differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
