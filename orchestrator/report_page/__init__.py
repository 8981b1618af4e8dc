"""`orchestrate report`: one self-contained HTML page of a sweep (figures, tables, the sweep
file, versions, when and where it ran), its figures also logged to the sweep's MLflow run."""
from orchestrator.report_page.page import Page, build_page, log_page

__all__ = ["Page", "build_page", "log_page"]
