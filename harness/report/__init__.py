"""Reports: a sweep's cells filled with our results beside the paper's values.

For now one plain Markdown table per sweep (`harness report`, the end of `make demo`); tables in the paper's layout
with tolerances, figures, HTML and claims arrive with the reports issue.
"""

from harness.report.table import cell_values, markdown_table

__all__ = ["cell_values", "markdown_table"]
