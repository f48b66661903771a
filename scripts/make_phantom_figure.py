#!/usr/bin/env python
"""Make docs/phantom_figure.png: T1 and STIR of thigh and calf, with and without labels.

Usage: python scripts/make_phantom_figure.py [--cohort DIR] [--out docs/phantom_figure.png]

Without --cohort it generates the default demo cohort (48 subjects, preset
small, seed 0) in a temporary folder first (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nxp2seg.phantom import generate_cohort
from nxp2seg.phantom.figure import phantom_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, help="an existing phantom cohort (with truth/)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "phantom_figure.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cohort = args.cohort or generate_cohort(Path(tmp) / "cohort", subjects=48, preset="small", seed=0, progress=True)
        print(phantom_figure(cohort, args.out))


if __name__ == "__main__":
    main()
