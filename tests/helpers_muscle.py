"""A muscle-graded cohort for tests (imported as ``helpers_muscle``): one graded region per
muscle and side, from a phantom cohort written at ``label_level=muscle``.

The phantom's readers grade compartments; here each muscle of a compartment inherits its
compartment's grades (so per-muscle targets are known), and ``dataset.json`` lists one
region per muscle label (compartment and side from the phantom's roll-up).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def regrade_per_muscle(cohort: Path) -> dict[str, list[str]]:
    """Rewrite ``cohort``'s regions and grades in place; returns ``{compartment region: [muscles]}``."""
    ds = json.loads((cohort / "dataset.json").read_text())
    name_of = {v: k for k, v in ds["labels"].items()}
    regions: dict[str, dict] = {}
    muscles: dict[str, list[str]] = {}
    for name, r in ds["regions"].items():
        for value in r["labels"]:
            muscle = name_of[value]
            regions[muscle] = {**r, "labels": [value]}
            muscles.setdefault(name, []).append(muscle)
    ds["regions"] = regions
    ds["label_level"] = "muscle"
    (cohort / "dataset.json").write_text(json.dumps(ds, indent=1))
    grades = pd.read_csv(cohort / "grades.csv")
    rows = [{**row, "region": m} for row in grades.to_dict("records") for m in muscles[row["region"]]]
    pd.DataFrame(rows, columns=grades.columns).to_csv(cohort / "grades.csv", index=False)
    return muscles


def muscle_graded_phantom(out: Path, **kwargs) -> Path:
    """A tiny phantom at ``label_level=muscle`` graded per muscle (see the module docstring)."""
    from nxp2seg.phantom import generate_cohort

    cohort = generate_cohort(out, preset="tiny", workers=1, label_level="muscle", **kwargs)
    regrade_per_muscle(cohort)
    return cohort


def per_muscle_schema():
    """The default muscle-level schema with one graded region per muscle and side."""
    from nxp2seg.data.schema import LabelSchema, Region, default_muscle_schema

    base = default_muscle_schema()
    regions = {}
    for r in base.regions.values():
        for value in r.labels:
            name = base.name_of(value)
            regions[name] = Region(name, r.station, r.compartment, r.side, (value,))
    return LabelSchema(labels=dict(base.labels), regions=regions, level="muscle")
