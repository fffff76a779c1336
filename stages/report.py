"""report: reports/report.md, reports/results.json and the figures, from records/, the label summary and the published runs."""
import sys

from misfit.report import write_report
from misfit.stage import run_stage

if __name__ == "__main__":
    sys.exit(run_stage(write_report))
