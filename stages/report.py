"""report: reports/report.md, reports/results.json, the figures and the DVC plot data, from records/, the label summary and the published runs."""
import gc
import sys

from misfit.plot_data import write_plot_data
from misfit.report import write_report
from misfit.stage import run_stage

if __name__ == "__main__":
    # statsmodels' Holm correction calls gc.collect() for each family of comparisons; frozen,
    # the objects the imports made are not walked each time (~0.15 s a call)
    gc.freeze()
    sys.exit(run_stage(write_report) or run_stage(write_plot_data))
