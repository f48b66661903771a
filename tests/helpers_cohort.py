"""Tiny cohorts in the dataset contract, for tests (imported as ``helpers_cohort``).

A tiny cohort has a few subjects with a thigh and a calf case each: a 12x10x4
T1 on a 2 x 2 x 5 mm grid, a STIR on a coarser 6x5x4 grid (T1 and STIR may
differ in geometry), a label map on the T1 grid holding every region of the
case's station plus subcutaneous tissue and bone, grades of every region by
every rater, one pattern per rater, and a clinical table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data import (
    CohortWriter,
    DatasetDescription,
    LabelSchema,
    default_compartment_schema,
    get_grade_scale,
)
from nxp2seg.data.schema import PATTERNS, STATIONS
from nxp2seg.io import make_nifti, save_nifti

SHAPE = (12, 10, 4)
SPACING = (2.0, 2.0, 5.0)


def tiny_affine(spacing=SPACING, origin=(-12.0, -10.0, 0.0)) -> np.ndarray:
    """RAS+ affine: i runs towards +x, the patient's right; low i is the patient's left."""
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def tiny_label(station: str, schema: LabelSchema, shape=SHAPE) -> np.ndarray:
    """Label map of one station: left leg in the low-x half, right in the high-x half (RAS+).

    Each compartment is a band along y; a muscle-level schema cycles its member
    muscles along z. Row y=0 is subcutaneous tissue, voxel (centre, 1, 0) bone.
    """
    lab = np.zeros(shape, dtype=np.uint8)
    nx, ny, nz = shape
    half = nx // 2
    for side, xs in (("left", slice(1, half)), ("right", slice(half, nx - 1))):
        regions = [r for r in schema.regions.values() if r.station == station and r.side == side]
        band = (ny - 2) // len(regions)
        for k, r in enumerate(regions):
            for z in range(nz):
                lab[xs, 2 + k * band : 2 + (k + 1) * band, z] = r.labels[z % len(r.labels)]
        lab[xs, 0, :] = schema.labels[f"subcutaneous_{side}"]
        lab[(xs.start + xs.stop) // 2, 1, :] = schema.labels["bone"]
    return lab


def tiny_grades(
    case_id: str, station: str, schema: LabelSchema, raters, max_grade: int
) -> list[dict[str, Any]]:
    rows = []
    for ri, rater in enumerate(raters):
        for k, region in enumerate(schema.region_names(station)):
            rows.append(
                {
                    "case_id": case_id,
                    "rater": rater,
                    "region": region,
                    "edema_grade": (k + ri) % (max_grade + 1),
                    "fat_grade": (k + 2 * ri) % 5,
                    "fascial_edema": (k + ri) % 2,
                    "subcutaneous_edema": k % 2,
                }
            )
    return rows


def make_tiny_cohort(
    root: str | Path,
    *,
    subjects: tuple[str, ...] = ("S01", "S02"),
    stations: tuple[str, ...] = STATIONS,
    raters: tuple[str, ...] = ("R1", "R2"),
    declare_raters: bool = True,
    unlabelled: tuple[str, ...] = (),
    schema: LabelSchema | None = None,
    grade_scale: str = "beltrame6",
    clinical: bool = True,
    seed: int = 0,
) -> Path:
    """Write a valid tiny cohort to ``root`` and return ``root``.

    Case ids are ``{subject}_{station}``; cases in ``unlabelled`` get no label map.
    """
    root = Path(root)
    schema = schema or default_compartment_schema()
    scale = get_grade_scale(grade_scale)
    desc = DatasetDescription(
        schema=schema, grade_scale=scale, raters=list(raters) if declare_raters else None
    )
    writer = CohortWriter(root, desc)
    rng = np.random.default_rng(seed)
    cases, grades, patterns = [], [], []
    for si, subj in enumerate(subjects):
        for station in stations:
            cid = f"{subj}_{station}"
            t1 = rng.normal(100.0, 10.0, SHAPE).astype(np.float32)
            stir = rng.normal(50.0, 5.0, (6, 5, 4)).astype(np.float32)
            label = (
                None
                if cid in unlabelled
                else make_nifti(tiny_label(station, schema), tiny_affine())
            )
            writer.write_case(
                cid,
                make_nifti(t1, tiny_affine()),
                make_nifti(stir, tiny_affine(spacing=(4.0, 4.0, 5.0), origin=(-11.0, -9.0, 0.0))),
                label,
            )
            cases.append({"case_id": cid, "subject_id": subj, "station": station, "split": "train"})
            grades += tiny_grades(cid, station, schema, raters, scale.max_grade)
            patterns += [
                {"case_id": cid, "rater": r, "pattern": PATTERNS[(si + ri) % 4]}
                for ri, r in enumerate(raters)
            ]
    table_clinical = pd.DataFrame(
        {"subject_id": list(subjects), "age": [40 + i for i in range(len(subjects))]}
    )
    writer.write_tables(
        pd.DataFrame(cases),
        pd.DataFrame(grades),
        pd.DataFrame(patterns),
        table_clinical if clinical else None,
    )
    writer.finish()
    return root


# -- mutations used by the tests -----------------------------------------------


def edit_table(root: Path, name: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrite ``root/name`` with ``fn(table)``; the table is read as text, exactly as on disk."""
    path = Path(root) / name
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def edit_json(root: Path, fn: Callable[[dict], Any]) -> None:
    """Rewrite ``dataset.json`` with ``fn(d)`` (which edits ``d`` in place)."""
    path = Path(root) / "dataset.json"
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def write_image(root: Path, rel: str, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    save_nifti(
        make_nifti(np.asarray(data), tiny_affine() if affine is None else affine), Path(root) / rel
    )
