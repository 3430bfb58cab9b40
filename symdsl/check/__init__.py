"""Checking specs: the numeric invariance check (and, later, the static graph check)."""
from .numeric import NumericReport, SiteResult, numeric_check

__all__ = ["NumericReport", "SiteResult", "numeric_check"]
