"""`emoforge catalog report`: numbers (data), charts (plots), contact sheets (sheets), the page."""

from jobs.report.page import write_report

__all__ = ["write_report"]
