"""The HTML report, rebuilt from run records alone (no recomputation): `build_report(study_dir)`."""

from .html import build_report, load_records

__all__ = ["build_report", "load_records"]
