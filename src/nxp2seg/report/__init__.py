"""Report output: figures (PNG bytes, matplotlib Agg) and the self-contained HTML report."""

from __future__ import annotations

from nxp2seg.report.html import ReportFigure, render_evaluation_report

__all__ = ["ReportFigure", "render_evaluation_report"]
