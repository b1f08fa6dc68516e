"""The compare report: ``report.{json,md,csv}`` and ``pareto.png``."""

from .compare import environment, report_rows, write_report

__all__ = ["write_report", "report_rows", "environment"]
