"""Same bundle, same bytes: predictions (phantom files: tests/test_phantom.py; weights: tests/test_train.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd


def _digest(folder: Path, pattern: str = "*") -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern)) if p.is_file()}


def test_same_bundle_same_predictions(trained_bundle, synthetic_cohort, tmp_path):
    from nxp2seg.predict import main

    for out in ("p1", "p2"):
        assert main([f"model={trained_bundle}", f"input={synthetic_cohort}", f"output={tmp_path / out}",
                     "progress=false", "qc=false"]) == 0
    assert _digest(tmp_path / "p1", "seg.nii.gz") == _digest(tmp_path / "p2", "seg.nii.gz")
    r1 = pd.read_csv(tmp_path / "p1" / "regions.csv")
    r2 = pd.read_csv(tmp_path / "p2" / "regions.csv")
    pd.testing.assert_frame_equal(r1, r2)
