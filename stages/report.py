"""report: reports/report.md, reports/results.json and the figures, from metrics/."""
import sys

from misfit.report import write_report
from misfit.stage import run_stage

if __name__ == "__main__":
    sys.exit(run_stage(write_report))
