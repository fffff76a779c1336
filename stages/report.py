"""report: reports/report.md, reports/results.json, the figures and the DVC plot data, from records/, the label summary and the published runs."""
import sys

from misfit.plot_data import write_plot_data
from misfit.report import write_report
from misfit.stage import run_stage

if __name__ == "__main__":
    sys.exit(run_stage(write_report) or run_stage(write_plot_data))
