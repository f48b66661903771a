"""Prediction outputs (DESIGN.md, "Prediction output"), each written atomically.

Per case, in ``OUT/{case_id}/``: ``seg.nii.gz`` (labels on the T1's grid, the
T1's header geometry), ``qc.png``, ``seg.dcm`` (DICOM input only) and, last,
``report.json``. ``report.json`` is the case's completion record: a case is
finished when it exists with ``status: ok`` (a rerun skips it), and the batch
tables are rebuilt from all reports, so a killed run never leaves a table
claiming a case whose files are missing.

Batch tables in ``OUT/``: ``cases.csv``, ``regions.csv``, ``subjects.csv``,
and the label table in the formats 3D Slicer (``labels.ctbl``) and ITK-SNAP
(``labels_itksnap.txt``) read.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from nxp2seg.data.schema import PATTERNS, STRUCTURE_SIDES, LabelSchema
from nxp2seg.data.sides import label_sides
from nxp2seg.grading.rollup import rollup_regions
from nxp2seg.grading.tables import subject_scores
from nxp2seg.io import atomic_write_bytes, atomic_write_text, nifti_bytes, write_csv

__all__ = [
    "CASE_COLUMNS",
    "compartment_rows",
    "REGION_COLUMNS",
    "SUBJECT_COLUMNS",
    "WARNING_SEPARATOR",
    "add_warning",
    "case_dir",
    "case_warnings",
    "failed_report",
    "finished",
    "label_colors",
    "read_report",
    "write_label_tables",
    "write_qc",
    "write_report",
    "write_segmentation",
    "write_tables",
]

CASE_COLUMNS = ["case_id", "subject_id", "station", "status", "error", "warnings", "pattern",
                *[f"p_{p}" for p in PATTERNS], "station_score", "asymmetry", "seconds",
                "station_source", "station_score_continuous", "ood_score"]
REGION_COLUMNS = ["case_id", "region", "edema_grade", "edema_grade_int", "fat_grade",
                  "fascial_edema_prob", "subcutaneous_edema_prob", "volume_ml", "edema_fraction",
                  "fat_grade_continuous", "fascial_edema", "subcutaneous_edema", "fat_fraction",
                  "level", "station", "compartment", "muscle", "side"]
SUBJECT_COLUMNS = ["subject_id", "thigh_score", "calf_score", "total_score"]
#: Joins a case's warning codes in the ``warnings`` column of ``cases.csv``.
WARNING_SEPARATOR = ";"
_WARNING_CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def add_warning(record: dict[str, Any], code: str, message: str) -> None:
    """Record a warning on a case: ``code`` in ``record["warnings"]``, ``message`` under it.

    ``record`` is a case's report (or the case row a report is built from):
    ``warnings`` is its list of codes (each once, in the order raised; they
    become the ``warnings`` column of ``cases.csv``, joined by
    :data:`WARNING_SEPARATOR`) and ``warning_messages`` maps each code to the
    sentence a person reads (the last one given for that code). A warning never
    changes the case's status. Codes are lower-case snake case
    (``input_unlike_training``, ``uneven_slice_spacing``); docs/prediction.md lists them.
    """
    if not _WARNING_CODE.match(code):
        raise ValueError(f"warning code {code!r}: use lower-case letters, digits and '_'")
    codes = record.setdefault("warnings", [])
    if code not in codes:
        codes.append(code)
    record.setdefault("warning_messages", {})[code] = message


def case_warnings(record: Mapping[str, Any]) -> str:
    """The ``warnings`` cell of ``cases.csv`` for a report: its codes joined by ``;`` ("" if none)."""
    codes = record.get("warnings") or []
    if isinstance(codes, str):
        return codes
    return WARNING_SEPARATOR.join(str(c) for c in codes)


def case_dir(out: Path, case_id: str) -> Path:
    return Path(out) / case_id


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(obj: Any) -> Any:
    """NaN -> None recursively (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_segmentation(path: Path, labels: np.ndarray, t1: nib.Nifti1Image) -> Path:
    """The label map with exactly the T1's shape, affine, qform and sform (codes kept)."""
    if tuple(labels.shape) != tuple(t1.shape[:3]):
        raise ValueError(f"labels {labels.shape} do not match the T1 grid {t1.shape[:3]}")
    header = t1.header.copy()
    img = nib.Nifti1Image(labels, None, header)
    img.set_data_dtype(labels.dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    img.header["cal_min"], img.header["cal_max"] = 0.0, float(labels.max()) if labels.size else 0.0
    img.header["descrip"] = b"nxp2seg segmentation"
    qform, qcode = t1.header.get_qform(coded=True)
    sform, scode = t1.header.get_sform(coded=True)
    if qform is not None:
        img.set_qform(qform, code=int(qcode))
    if sform is not None:
        img.set_sform(sform, code=int(scode))
    if qform is None and sform is None:  # an ANALYZE-like header: give it the T1's affine
        img.set_sform(t1.affine, code=1)
        img.set_qform(t1.affine, code=1)
    return atomic_write_bytes(path, nifti_bytes(img))


def write_report(path: Path, report: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(_clean(dict(report)), indent=2, default=_json_default) + "\n")


def read_report(path: Path) -> dict[str, Any] | None:
    """A case's report, or ``None`` when it is missing or unreadable (an unfinished case)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def finished(out: Path, case_id: str, needs: Iterable[str] = ("seg.nii.gz",)) -> bool:
    """A case is finished when its report says ``ok`` and the files it lists exist."""
    d = case_dir(out, case_id)
    rep = read_report(d / "report.json")
    return bool(rep and rep.get("status") == "ok" and all((d / n).exists() for n in needs))


def failed_report(case_id: str, subject_id: str, station: str | None, error: str,
                  seconds: float, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {"case_id": case_id, "subject_id": subject_id, "station": station, "status": "failed",
            "error": error, "warnings": [], "seconds": seconds, "inputs": dict(inputs)}


# ---------------------------------------------------------------------------
# label tables
# ---------------------------------------------------------------------------

_BASE_COLORS = {
    "anterior": (230, 85, 13), "medial": (49, 130, 189), "posterior": (49, 163, 84),
    "lateral": (117, 107, 177), "subcutaneous": (253, 208, 162), "bone": (240, 240, 240),
}


def label_colors(schema: LabelSchema) -> dict[int, tuple[int, int, int]]:
    """A colour per label value: one hue per compartment (or structure), the left side darker.

    Compartments and sides are read from the schema (regions, structures), not from names.
    """
    kind = {v: r.compartment for r in schema.regions.values() for v in r.labels}
    kind.update({schema.labels[n]: k for n, (k, _) in STRUCTURE_SIDES.items() if n in schema.labels})
    sides = label_sides(schema)
    cmap = {}
    rng = np.random.default_rng(0)
    for value in schema.labels.values():
        if value == 0:
            continue
        key = kind.get(int(value))
        base = np.array(_BASE_COLORS[key] if key in _BASE_COLORS else rng.integers(40, 230, 3), float)
        if sides.get(int(value)) == "left":
            base = base * 0.65
        cmap[int(value)] = tuple(int(c) for c in base)
    return cmap


def write_label_tables(out: Path, schema: LabelSchema) -> list[Path]:
    """``labels.ctbl`` (3D Slicer colour table) and ``labels_itksnap.txt`` (ITK-SNAP label description)."""
    colors = label_colors(schema)
    items = sorted((int(v), n) for n, v in schema.labels.items())
    slicer = ["# nxp2seg label table (3D Slicer colour table: value name R G B A)"]
    snap = ["# ITK-SnAP Label Description File (nxp2seg)",
            "# IDX  -R-  -G-  -B-  -A--  VIS MSH  LABEL"]
    for value, name in items:
        r, g, b = colors.get(value, (0, 0, 0))
        alpha = 0 if value == 0 else 255
        slicer.append(f"{value} {name} {r} {g} {b} {alpha}")
        snap.append(f"{value:5d} {r:5d} {g:4d} {b:4d} {1.0 if value else 0.0:8.2f} "
                    f"{1 if value else 0:2d} {1 if value else 0:2d}    \"{name}\"")
    return [atomic_write_text(Path(out) / "labels.ctbl", "\n".join(slicer) + "\n"),
            atomic_write_text(Path(out) / "labels_itksnap.txt", "\n".join(snap) + "\n")]


# ---------------------------------------------------------------------------
# QC picture
# ---------------------------------------------------------------------------


def _canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The array reoriented to RAS+ (closest canonical axes) for display."""
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt)


def write_qc(path: Path, t1: np.ndarray, stir: np.ndarray, labels: np.ndarray, edema: np.ndarray,
             affine: np.ndarray, schema: LabelSchema, title: str, n_slices: int = 3,
             channels: Sequence[str] = ("T1", "STIR")) -> Path:
    """Axial slices of T1 (segmentation filled and outlined) and STIR (edema in red), radiological view.

    ``channels``: the names the two rows are labelled with, the bundle's (``FAT``, ``WATER`` for Dixon).

    The arrays are reoriented to RAS first, so every picture shows the patient's
    right on the viewer's left (marked R) and anterior up, whatever the input's
    axis order. Drawn with numpy and Pillow (a few tens of milliseconds; a
    matplotlib figure took ten times as long per exam).
    """
    from PIL import Image, ImageDraw

    t1c, stc, labc, edc = (_canonical(a, affine) for a in (t1, stir, labels, edema.astype(np.uint8)))

    def pct(a: np.ndarray, q: float) -> float:  # of a strided sample: plenty for display
        return float(np.percentile(a.reshape(-1)[:: max(1, a.size // 200_000)], q))

    body = np.argwhere((t1c > pct(t1c, 99) * 0.15).any(axis=2) | (labc > 0).any(axis=2))
    if body.size:  # crop the in-plane field of view to the legs (with a margin)
        lo = np.maximum(body.min(0) - 4, 0)
        hi = np.minimum(body.max(0) + 5, t1c.shape[:2])
        t1c, stc, labc, edc = (a[lo[0]:hi[0], lo[1]:hi[1]] for a in (t1c, stc, labc, edc))
    z_with = np.flatnonzero((labc > 0).any(axis=(0, 1)))
    zs = z_with if z_with.size else np.arange(labc.shape[2])
    picks = np.unique(zs[np.linspace(0, len(zs) - 1, n_slices + 2).round().astype(int)[1:-1]])
    colors = label_colors(schema)
    lut = np.zeros((int(max(colors, default=0)) + 1, 3), np.float32)
    for v, c in colors.items():
        lut[v] = c
    scale = max(1, int(np.ceil(240 / max(t1c.shape[:2]))))  # small grids drawn larger
    windows = [(pct(img, 1), pct(img, 99.5)) for img in (t1c, stc)]

    def view(a: np.ndarray, z: int) -> np.ndarray:
        # RAS+: +x = patient's right, +y = anterior. Rows from anterior down, columns from
        # the patient's right to left (radiological: right on the viewer's left).
        return np.kron(a[::-1, ::-1, z].T, np.ones((scale, scale), a.dtype))

    def gray(img: np.ndarray, z: int, window: tuple[float, float]) -> np.ndarray:
        lo_v, hi_v = window
        g = np.clip((view(img, z).astype(np.float32) - lo_v) / max(hi_v - lo_v, 1e-6), 0, 1) * 255
        return np.repeat(g[..., None], 3, axis=2)

    def blend(base: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return base * (1 - alpha[..., None]) + color * alpha[..., None]

    head, gap = 14, 4
    panels = []
    for z in picks:
        lab = view(labc, z)
        edge = np.zeros(lab.shape, bool)
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        alpha = np.where(edge & (lab > 0), 1.0, np.where(lab > 0, 0.3, 0.0)).astype(np.float32)
        top = blend(gray(t1c, z, windows[0]), lut[lab], alpha)
        red = np.array([255.0, 0.0, 0.0], np.float32)
        bottom = blend(gray(stc, z, windows[1]), red, np.where(view(edc, z) > 0, 0.45, 0.0).astype(np.float32))
        panels.append((int(z), top, bottom))
    h, w = panels[0][1].shape[:2] if panels else (1, 1)
    canvas = Image.new("RGB", (len(panels) * (w + gap) + gap, 2 * (h + head) + head + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 1), title, fill="black")
    for j, (z, top, bottom) in enumerate(panels):
        x0 = gap + j * (w + gap)
        for i, (img, name) in enumerate(((top, channels[0]), (bottom, channels[1]))):
            y0 = head + i * (h + head)
            draw.text((x0, y0 + 1), f"{name}  slice {z}", fill="black")
            canvas.paste(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), (x0, y0 + head - 2))
            draw.text((x0 + 3, y0 + head + h // 2), "R", fill="yellow")
            draw.text((x0 + w - 10, y0 + head + h // 2), "L", fill="yellow")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=3)  # as small as the default level 6 here, 2.5x faster
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------
# batch tables
# ---------------------------------------------------------------------------


def compartment_rows(rows: Sequence[Mapping[str, Any]], schema: LabelSchema, scale: Any
                     ) -> list[dict[str, Any]]:
    """The compartment rows of a muscle-graded case's ``regions.csv``, rolled up from its muscle rows.

    ``grading.rollup_regions``' rule (the readers' grades roll up alike): the
    mean of the muscles' edema and fat grades (``edema_grade_int``,
    ``fat_grade``: their integer grades), the largest flag probability and the
    flag of any muscle, the summed volume and the volume-weighted edema
    fraction. Each row is marked ``level = "compartment"``; none for a
    compartment-graded schema.
    """
    if schema.graded_level != "muscle" or not rows:
        return []
    df = pd.DataFrame(list(rows))
    keep = ["case_id", "region", "edema_grade", "fat_grade_continuous", "fascial_edema_prob",
            "subcutaneous_edema_prob", "fascial_edema", "subcutaneous_edema", "volume_ml",
            "edema_fraction"]
    df = df[[c for c in keep if c in df.columns]]
    for flag in ("fascial_edema", "subcutaneous_edema"):
        if flag in df.columns:
            df[flag] = df[flag].map(lambda v: np.nan if v is None else float(bool(v)))
    up = rollup_regions(df, schema, scale)
    comp = schema.compartment_schema().regions
    out = []
    for rec in up.to_dict("records"):
        r = comp[rec["region"]]
        for flag in ("fascial_edema", "subcutaneous_edema"):
            v = rec.get(flag)
            rec[flag] = None if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)
        for key in ("edema_grade_int", "fat_grade"):
            v = rec.get(key)
            rec[key] = None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
        rec.update(level="compartment", station=r.station, compartment=r.compartment, muscle=None,
                   side=r.side)
        out.append(rec)
    return out


def write_tables(out: Path, case_ids: Sequence[str], skipped: Iterable[str] = ()) -> dict[str, pd.DataFrame]:
    """Rebuild ``cases.csv``, ``regions.csv``, ``subjects.csv`` from the reports of ``case_ids``.

    Cases in ``skipped`` (finished by an earlier run, not predicted again) are
    listed with ``status=skipped`` and their earlier results. A case without a
    readable report is listed with ``status=failed`` and says so.
    """
    skipped = set(skipped)
    case_rows, region_rows = [], []
    for cid in case_ids:
        rep = read_report(case_dir(out, cid) / "report.json")
        if rep is None:
            case_rows.append({"case_id": cid, "status": "failed",
                              "error": "no report.json: the run stopped before this case finished; rerun"})
            continue
        row = {k: rep.get(k) for k in CASE_COLUMNS if k in rep}
        row["warnings"] = case_warnings(rep)
        row.update(rep.get("scores", {}))
        if cid in skipped and row.get("status") == "ok":
            row["status"] = "skipped"
        case_rows.append(row)
        region_rows.extend(rep.get("regions", []))
    cases = pd.DataFrame(case_rows).reindex(columns=CASE_COLUMNS + sorted(
        {k for r in case_rows for k in r if k.startswith("asymmetry_")}))
    regions = pd.DataFrame(region_rows).reindex(columns=REGION_COLUMNS)
    ok = cases[cases["status"].isin(["ok", "skipped"])]
    subjects = pd.DataFrame(columns=SUBJECT_COLUMNS)
    if not ok.empty:  # the domain rule (grading.tables.subject_scores), subjects in sorted order
        scores = ok.assign(subject_id=ok["subject_id"].astype(str),
                           station_score=ok["station_score"].astype(float))
        subjects = (subject_scores(scores, keep="first").sort_values("subject_id", kind="stable")
                    .reset_index(drop=True)[SUBJECT_COLUMNS])
    write_csv(cases, Path(out) / "cases.csv")
    write_csv(regions, Path(out) / "regions.csv")
    write_csv(subjects, Path(out) / "subjects.csv")
    return {"cases": cases, "regions": regions, "subjects": subjects}
