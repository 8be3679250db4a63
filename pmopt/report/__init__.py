"""pmopt.report: a run's curves to PNG plots, a summary CSV and one self-contained HTML page (docs/ARCHITECTURE.md §3).

`build_report(run_dir, out_dir=None)` is the Python form of `pmopt report RUN_DIR`.
"""

from pmopt.report.html import build_report, load_curves, summary_rows
from pmopt.report.plots import plot_all, plot_metric_vs_kl, plot_metric_vs_n

__all__ = ["build_report", "load_curves", "plot_all", "plot_metric_vs_kl", "plot_metric_vs_n", "summary_rows"]
