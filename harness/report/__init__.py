"""Reports: every table and figure of a sweep rebuilt from its run folders, ours beside the paper's.

    from harness.report import collect
    df = collect(["sweeps/smoke.yaml"])        # long format: a row per (sweep, cell, job)

`harness report SWEEP...` writes reports/<sweep>/: table.md, table.tex, cells.csv, results.csv, the figures, and
index.html (one self-contained page with tables, figures, claims, rank agreement with the paper and provenance).
"""

from harness.report.collect import collect

__all__ = ["collect"]
