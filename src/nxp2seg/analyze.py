"""``python -m nxp2seg.analyze cohort=DIR [predictions=DIR] [clinical=CSV] output=DIR [key=value ...]``.

The analyses of the two motivating papers, from grades alone -- the readers'
(a cohort's ``grades.csv`` and ``patterns.csv``) or the model's (predict's
``regions.csv`` and ``cases.csv``) -- plus an optional clinical table:

* **describe** (seed paper 000): patients with edema, fat, fascial and
  subcutaneous edema per compartment and station, pattern counts, station
  score by pattern, symmetry, thigh vs calf (McNemar beside the papers'
  chi-square), the readers' kappa per indicator, the per-subject heatmap;
* **the score against clinical variables** (Table 1), and with
  ``group_by`` every variable between two groups (Table 2), with
  Kolmogorov-Smirnov (Lilliefors) beside Shapiro-Wilk;
* **compare** (seed paper 004, with ``compare.by``): two groups per muscle
  or compartment: median [IQR], box plots, linear mixed-effects models
  (per-item contrasts with a correction, the pooled effect, diagnostics), and
  a secondary analysis without some subjects.

Each table as CSV (UTF-8 with BOM, for Excel) and Markdown, figures as SVG,
PDF and 300 dpi PNG, everything in ``analysis.md`` and ``analysis.html``, and
``summary.json``. ``scores=CSV clinical=CSV`` (a ready score table) makes the
clinical tables only. The computations: :mod:`nxp2seg.analysis` and
:mod:`nxp2seg.stats`; how to read them: ``docs/analysis.md``. Options and
defaults: ``configs/analyze.yaml`` (``--help`` prints them).

Exit codes: 0 written; 2 unusable input (a missing file or column, no subject
in both tables, a repeated subject, non-numeric values where numbers are
needed -- the message names the file, the column and the rows). Nothing is
written to ``output`` unless the whole analysis succeeds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nxp2seg.config_utils import load_cli_config
from nxp2seg.stats.join import AnalysisError, group_column, join_tables

__all__ = ["AnalysisError", "analyze", "group_column", "join_tables", "load_config", "main"]

log = logging.getLogger("nxp2seg.analyze")
CONFIG = Path(__file__).parent / "configs" / "analyze.yaml"


def load_config(overrides: list[str]) -> DictConfig:
    """``configs/analyze.yaml`` with ``key=value`` overrides (unknown keys are refused)."""
    # types.COLUMN=KIND, labels.NAME=TEXT and compare.combine.NAME=[...] add keys
    return load_cli_config(CONFIG, overrides, open_keys=("types", "labels", "compare.combine"))


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis from a config; writes the outputs and returns the summary."""
    from nxp2seg.analysis import run_analysis  # matplotlib and statsmodels load only when run

    return run_analysis(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(CONFIG.read_text())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(argv)
        summary = analyze(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"nxp2seg.analyze: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.output).resolve()
    for name in ("table1.md", "compare.md", "involvement.md"):
        if (out / name).exists():
            print((out / name).read_text())
    print(f"{len(summary.get('files', []))} tables and figures, analysis.html and summary.json "
          f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
