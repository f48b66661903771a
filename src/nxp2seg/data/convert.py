"""``python -m nxp2seg.data.convert spec=SPEC out=DIR [key=value ...]``: real exams -> a cohort.

A *spec* (YAML or CSV, docs/realdata.md) names per exam the subject, the
station, the two images (NIfTI files or DICOM series folders) and what they
are, an optional label map with its label table, and options:

.. code-block:: yaml

    level: compartment            # or muscle
    label_table: labels.label     # ITK-SNAP .label, Slicer colour table or value,name CSV
    aliases: {AM: adductors}      # or a name,target CSV: source label names -> schema names
    side: auto                    # auto | right | left: sideless labels' side
    readers: readers.csv          # wide: one row per exam and reader, one column per region
    grade_scale: beltrame6
    exams:                        # or a CSV path; columns: subject_id, station, fat|t1,
      - subject_id: S01           # water|stir, label, label_table, side, split, case_id
        station: thigh
        fat: S01/fat.nii.gz       # fat, water (Dixon) or t1, stir
        water: S01/water.nii.gz
        label: S01/muscles.nii.gz

A CSV spec is the ``exams`` table; the options then come as ``key=value``
arguments (which also override a YAML spec's). Paths are relative to the
spec's folder. The cohort (images, label maps on the channel-0 grid, tables,
``dataset.json`` with ``annotated`` when the masks cover only some
structures) is written to a temporary folder beside ``out`` and moved into
place only once every exam converted and the result passed
:func:`~nxp2seg.data.verify.verify_cohort`; otherwise nothing is written and
every problem is reported, each naming its exam and file. Exit codes: 0
written, 1 conversion failed, 2 bad arguments.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from nxp2seg.config_utils import parse_key_values
from nxp2seg.data.cohort import CHANNELS, DIXON_CHANNELS, CohortWriter, DatasetDescription
from nxp2seg.data.convert_labels import AliasTable, LabelTableError, read_label_table
from nxp2seg.data.convert_readers import ReadersSheetError, read_readers_sheet
from nxp2seg.data.convert_schema import LabelMapper, build_schema
from nxp2seg.data.convert_sides import SideSplitError
from nxp2seg.data.dicom_headers import DicomError
from nxp2seg.data.dicom_series import check_series, find_series, read_series
from nxp2seg.data.schema import STATIONS, get_grade_scale
from nxp2seg.io import make_nifti

__all__ = ["ConvertError", "ConvertOptions", "convert", "main"]

_IMAGE_COLUMNS = {"t1_stir": ("t1", "stir"), "dixon": ("fat", "water")}
_EXAM_KEYS = {"case_id", "subject_id", "subject", "station", "t1", "stir", "fat", "water", "label",
              "label_table", "side", "split"}


class ConvertError(ValueError):
    """The spec or an exam cannot be converted (the message names it)."""


@dataclass
class ConvertOptions:
    """Everything a conversion needs besides the exams (spec keys and ``key=value`` arguments)."""

    out: str | None = None
    level: str = "compartment"
    label_table: str | None = None
    aliases: Any = None  # {source: target} or a CSV path
    side: str = "auto"
    readers: str | None = None
    grade_scale: str = "beltrame6"
    name: str = "converted cohort"
    overwrite: bool = False
    min_gap_mm: float = 2.0
    base: Path = field(default_factory=Path.cwd)  # the spec's folder: relative paths start here


@dataclass
class Exam:
    case_id: str
    subject_id: str
    station: str
    images: tuple[str, str]
    label: str | None
    label_table: str | None
    side: str
    split: str | None


# ---------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------


def read_spec(path: str | Path, overrides: dict[str, Any]) -> tuple[list[Exam], ConvertOptions, str]:
    """Exams, options and the sequence (``t1_stir`` | ``dixon``) of a YAML or CSV spec."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"spec {path}: no such file; give spec=exams.yaml or spec=exams.csv")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConvertError(f"spec {path}: not valid YAML ({e})") from None
        if not isinstance(doc, dict) or "exams" not in doc:
            raise ConvertError(f"spec {path}: needs an 'exams' list (or a CSV path); see docs/realdata.md")
        exams_src = doc.pop("exams")
    else:
        doc, exams_src = {}, str(path)
    known = set(ConvertOptions.__dataclass_fields__) - {"base"}
    unknown = sorted(set(doc) - known) + sorted(set(overrides) - known - {"spec"})
    if unknown:
        raise ConvertError(f"unknown option(s) {unknown}; valid: {sorted(known)}")
    opts = ConvertOptions(**{**doc, **{k: v for k, v in overrides.items() if k != "spec"}}, base=path.parent)
    if isinstance(exams_src, str):
        table_path = opts.base / exams_src
        try:
            rows = pd.read_csv(table_path, dtype=str, keep_default_na=False).to_dict("records")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ConvertError(f"exam table {table_path}: cannot be read as CSV ({e})") from None
    elif isinstance(exams_src, list):
        rows = exams_src
    else:
        raise ConvertError(f"spec {path}: 'exams' must be a list of exams or a CSV path")
    exams, sequence = _exams(rows, opts, path)
    return exams, opts, sequence


def _exams(rows: list[dict[str, Any]], opts: ConvertOptions, where: Path) -> tuple[list[Exam], str]:
    if not rows:
        raise ConvertError(f"spec {where}: no exams")
    cols = set().union(*(r.keys() for r in rows))
    unknown = sorted(cols - _EXAM_KEYS)
    if unknown:
        raise ConvertError(f"spec {where}: unknown exam column(s) {unknown}; valid: {sorted(_EXAM_KEYS)}")
    kinds = [s for s, (a, b) in _IMAGE_COLUMNS.items() if a in cols or b in cols]
    if len(kinds) != 1:
        raise ConvertError(
            f"spec {where}: name the two images per exam either t1 and stir, or fat and water (Dixon), "
            f"not {sorted(cols & {'t1', 'stir', 'fat', 'water'})}"
        )
    sequence = kinds[0]
    exams, seen = [], set()
    for i, r in enumerate(rows, 1):
        r = {k: ("" if v is None else str(v).strip()) for k, v in r.items()}
        subject = r.get("subject_id") or r.get("subject") or ""
        station = r.get("station", "").lower()
        if not subject or station not in STATIONS:
            raise ConvertError(f"spec {where}, exam {i}: needs subject_id and station (one of {STATIONS})")
        cid = r.get("case_id") or f"{subject}_{station}"
        if cid in seen:
            raise ConvertError(f"spec {where}, exam {i}: case id {cid!r} appears twice")
        seen.add(cid)
        a, b = _IMAGE_COLUMNS[sequence]
        if not r.get(a) or not r.get(b):
            raise ConvertError(f"spec {where}, exam {cid}: needs both images, {a} and {b}")
        side = (r.get("side") or opts.side).lower()
        if side not in ("auto", "right", "left"):
            raise ConvertError(f"spec {where}, exam {cid}: side {side!r}; use auto, right or left")
        exams.append(Exam(cid, subject, station, (r[a], r[b]), r.get("label") or None,
                          r.get("label_table") or opts.label_table, side, r.get("split") or None))
    return exams, sequence


# ---------------------------------------------------------------------------
# reading images
# ---------------------------------------------------------------------------


def read_image(path: Path, where: str) -> nib.Nifti1Image:
    """A NIfTI file, another ITK format (NRRD, MHA) or a DICOM series folder, as a NIfTI image."""
    if path.is_dir():
        try:
            series = find_series(path)
            if len(series) != 1:
                raise ConvertError(f"{where}: {path} holds {len(series)} DICOM series; point to one series' folder")
            check_series(series[0])
            return read_series(series[0])
        except DicomError as e:
            raise ConvertError(f"{where}: {e}") from None
    if not path.is_file():
        raise ConvertError(f"{where}: {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return nib.load(str(path))
        return _read_itk(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConvertError(f"{where}: cannot read {path} ({e})") from None


def _read_itk(path: Path) -> nib.Nifti1Image:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise ValueError(f"a {image.GetDimension()}D image; expected 3D")
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection(), float).reshape(3, 3) * np.array(image.GetSpacing(), float)
    affine[:3, 3] = image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK's world is LPS
    return make_nifti(np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0)), lps_to_ras @ affine)


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, tol_mm: float = 0.05) -> bool:
    if a.shape[:3] != b.shape[:3]:
        return False
    corners = np.array([[i, j, k, 1.0] for i in (0, a.shape[0] - 1) for j in (0, a.shape[1] - 1) for k in (0, a.shape[2] - 1)])
    return bool(np.abs((a.affine - b.affine) @ corners.T).max() <= tol_mm)


# ---------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------


def convert(spec: str | Path, **overrides: Any) -> Path:
    """Convert the exams of ``spec`` into a cohort at ``out``; returns its folder.

    Raises:
        ConvertError: listing every exam that failed (nothing is written then).
    """
    exams, opts, sequence = read_spec(spec, overrides)
    if not opts.out:
        raise ConvertError("give the cohort folder: out=DIR")
    if opts.level not in ("compartment", "muscle"):
        raise ConvertError(f"level={opts.level!r}: use compartment or muscle")
    out = Path(opts.out)
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise ConvertError(f"{out} is not empty; choose another folder or pass overwrite=true to replace it")
    grade_scale = get_grade_scale(opts.grade_scale)
    aliases = _aliases(opts)
    tables: dict[str, dict[int, str]] = {}
    problems: list[str] = []
    for ex in exams:
        if ex.label and ex.label_table and ex.label_table not in tables:
            try:
                tables[ex.label_table] = read_label_table(opts.base / ex.label_table)
            except LabelTableError as e:
                problems.append(f"exam {ex.case_id}: {e}")
        elif ex.label and not ex.label_table:
            problems.append(f"exam {ex.case_id}: a label map needs a label table (label_table=...)")
    if problems:
        raise ConvertError("\n".join(problems))
    try:
        schema, annotated = build_schema(opts.level, tables.values(), aliases, {e.station for e in exams})
    except LabelTableError as e:
        raise ConvertError(str(e)) from None
    mapper = LabelMapper(schema, aliases, opts.min_gap_mm)
    tmp = out.parent / f".{out.name}.converting"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset = DatasetDescription(
        schema=schema, grade_scale=grade_scale,
        channel_names=dict(DIXON_CHANNELS if sequence == "dixon" else CHANNELS),
        name=opts.name, description=f"converted by nxp2seg.data.convert from {Path(spec).name}",
        annotated=annotated,
    )
    writer = CohortWriter(tmp, dataset, overwrite=True)
    for ex in exams:
        try:
            _convert_exam(ex, opts, writer, mapper, tables)
        except (ConvertError, LabelTableError, SideSplitError) as e:
            problems.append(str(e))
    exam_table = pd.DataFrame([{"case_id": e.case_id, "subject_id": e.subject_id, "station": e.station,
                                "split": e.split} for e in exams])
    grades, patterns = pd.DataFrame(), pd.DataFrame()
    if opts.readers:
        try:
            grades, patterns = read_readers_sheet(opts.base / opts.readers, exam_table)
        except ReadersSheetError as e:
            problems.append(str(e))
    if problems:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConvertError("\n".join(problems))
    if len(grades):
        dataset.raters = sorted(set(grades["rater"]))
    writer.write_tables(exam_table, grades, patterns)
    writer.finish(num_training=len(exams))
    from nxp2seg.data.verify import verify_cohort

    report = verify_cohort(tmp)
    if not report.ok:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConvertError("the converted cohort does not pass verify:\n" + report.summary())
    if out.exists():
        shutil.rmtree(out)  # empty, or overwrite=true
    tmp.rename(out)
    return out


def _aliases(opts: ConvertOptions) -> AliasTable:
    try:
        if isinstance(opts.aliases, str):
            return AliasTable.from_file(opts.base / opts.aliases)
        return AliasTable(opts.aliases or {})
    except LabelTableError as e:
        raise ConvertError(str(e)) from None


def _convert_exam(ex: Exam, opts: ConvertOptions, writer: CohortWriter, mapper: LabelMapper,
                  tables: dict[str, dict[int, str]]) -> None:
    where = f"exam {ex.case_id}"
    img0 = read_image(opts.base / ex.images[0], f"{where} ({ex.images[0]})")
    img1 = read_image(opts.base / ex.images[1], f"{where} ({ex.images[1]})")
    label = None
    if ex.label:
        lab = read_image(opts.base / ex.label, f"{where} ({ex.label})")
        if not _same_grid(lab, img0):
            raise ConvertError(
                f"{where}: the label map {ex.label} is not on the grid of {ex.images[0]} (shape "
                f"{lab.shape[:3]} vs {img0.shape[:3]}, or the affines differ); export it on that image's grid"
            )
        data = np.asarray(lab.dataobj)
        if not np.issubdtype(data.dtype, np.integer):
            rounded = np.rint(data)
            if not np.allclose(data, rounded):
                raise ConvertError(f"{where}: the label map {ex.label} holds non-integer values; give a label map")
            data = rounded.astype(np.int32)
        mapped = mapper.map(data, img0.affine, tables[ex.label_table], ex.station, ex.side,
                            f"{where} ({ex.label})")
        label = make_nifti(mapped, img0.affine)
    writer.write_case(ex.case_id, img0, img1, label)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        overrides = parse_key_values(argv, "spec=exams.yaml out=DIR")
        if "spec" not in overrides:
            raise ValueError("give the spec: spec=exams.yaml (or exams.csv) out=DIR")
    except ValueError as e:
        console.print(f"[red]nxp2seg.data.convert: {e}[/red]")
        return 2
    try:
        spec = overrides.pop("spec")
        root = convert(spec, **overrides)
    except ConvertError as e:
        console.print(f"[red]nxp2seg.data.convert failed:\n{e}[/red]")
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
