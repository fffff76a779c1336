"""report: reports/report.md, reports/results.json, the figures and the DVC plot data, from records/, the label summary and the published runs."""
import gc
import sys

from misfit.core.stage import run_stage
from misfit.report.document import write_report
from misfit.report.plot_data import write_plot_data

if __name__ == "__main__":
    # statsmodels' Holm correction calls gc.collect() for each family of comparisons; frozen,
    # the objects the imports made are not walked each time (~0.15 s a call)
    gc.freeze()
    sys.exit(run_stage(write_report) or run_stage(write_plot_data))
