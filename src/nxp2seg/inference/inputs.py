"""What ``predict`` runs on: a list of cases found in a cohort, a NIfTI folder, a manifest or DICOM.

Every input kind becomes the same :class:`CaseInput` list; a case that cannot
be made (an unpaired file, an unknown series, a bad case id) becomes a
:class:`CaseInput` with ``error`` set, so it is reported as failed and the
batch goes on. Nothing here reads image data except DICOM headers.

Input kinds (``input=PATH``, optionally ``manifest=CSV``):

* **cohort** -- a folder with ``dataset.json`` and ``cases.csv`` (the dataset
  contract): its cases, stations and subjects (``split=`` picks a split).
* **manifest** -- a CSV with ``case_id, t1, stir`` and optional ``subject_id,
  station``; ``t1``/``stir`` are NIfTI files or DICOM series folders, relative
  to the manifest's folder or absolute.
* **NIfTI folder** -- ``*.nii``/``*.nii.gz`` files (searched recursively),
  paired by name (:func:`pair_nifti_files`):

  1. nnU-Net channels: ``{case}_0000`` = T1, ``{case}_0001`` = STIR;
  2. a sequence token at the end of the name: ``{case}_T1`` / ``{case}-t1w`` and
     ``{case}_STIR`` / ``{case}_TIRM`` (any of ``_ - .`` as separator, any case);
  3. one folder per case: ``{case}/t1.nii.gz`` and ``{case}/stir.nii.gz`` (the
     file names are exactly the sequence token), case id = the folder's name.

* **DICOM folder** -- any other folder: DICOM files found recursively,
  grouped into series (:mod:`nxp2seg.inference.dicom`); one case per study
  with a T1 and a STIR series recognised from their attributes; case id = the
  study's folder relative to ``input`` (``/`` replaced by ``_``).

The station comes from the manifest or ``cases.csv``; else from a ``thigh`` /
``calf`` token in the case id (or DICOM ``BodyPartExamined``); else it is
left ``None`` and inferred from the segmentation (reported as inferred). The
subject id is the case id without its station token.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nxp2seg.data.schema import STATIONS

__all__ = [
    "NIFTI_SUFFIXES",
    "CaseInput",
    "InputError",
    "discover_cases",
    "pair_nifti_files",
    "safe_case_id",
    "station_from_name",
    "subject_from_case",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_T1_TOKENS = ("t1", "t1w")
_STIR_TOKENS = ("stir", "tirm", "ir")
_SEQ_SUFFIX = re.compile(r"^(?P<case>.+?)[_.-](?P<seq>t1w?|stir|tirm)$", re.IGNORECASE)
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_BODY_PART = {"THIGH": "thigh", "UPPER LEG": "thigh", "UPPERLEG": "thigh", "FEMUR": "thigh",
              "LEG": "calf", "LOWER LEG": "calf", "LOWERLEG": "calf", "CALF": "calf"}


class InputError(ValueError):
    """The input as a whole cannot be read (no cases at all, a bad manifest)."""


@dataclass
class CaseInput:
    """One exam (one station) to predict.

    ``t1``/``stir`` are NIfTI files or DICOM series folders; ``t1_series`` /
    ``stir_series`` hold the :class:`~nxp2seg.inference.dicom.SeriesInfo` of
    DICOM input. ``error`` set = the case is reported failed without running.
    """

    case_id: str
    subject_id: str
    station: str | None
    t1: Path | None
    stir: Path | None
    source: str  # cohort | manifest | nifti | dicom
    t1_series: Any = None
    stir_series: Any = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_dicom(self) -> bool:
        return self.t1_series is not None


def safe_case_id(case_id: str) -> bool:
    """A case id usable as a folder name: letters, digits, ``. _ -``, no ``..``, no separators."""
    return bool(_CASE_ID.match(case_id)) and ".." not in case_id


def station_from_name(name: str) -> str | None:
    """``thigh`` or ``calf`` when exactly one of them is a token of ``name`` (split on ``_ - .``/space)."""
    tokens = {t.lower() for t in re.split(r"[_\-. /]+", name)}
    found = [s for s in STATIONS if s in tokens]
    return found[0] if len(found) == 1 else None


def subject_from_case(case_id: str) -> str:
    """The case id without its station token (``P001_thigh`` -> ``P001``), else the case id."""
    parts = re.split(r"([_\-.])", case_id)
    kept = [p for p in parts[::2] if p.lower() not in STATIONS]
    if len(kept) == len(parts[::2]) or not kept:
        return case_id
    return "_".join(kept)


def _nifti_stem(path: Path) -> str | None:
    for suf in NIFTI_SUFFIXES:
        if path.name.lower().endswith(suf):
            return path.name[: -len(suf)]
    return None


def _case(case_id: str, t1: Path | None, stir: Path | None, source: str,
          station: str | None = None, subject: str | None = None,
          error: str | None = None) -> CaseInput:
    if error is None and not safe_case_id(case_id):
        error = (f"case id {case_id!r} is not a safe folder name (letters, digits, '.', '_', '-'; "
                 "no path separators or '..'); rename it")
    st = station if station in STATIONS else station_from_name(case_id)
    return CaseInput(case_id=case_id, subject_id=subject or subject_from_case(case_id), station=st,
                     t1=t1, stir=stir, source=source, error=error)


def pair_nifti_files(folder: Path) -> list[CaseInput]:
    """Pair T1 and STIR NIfTI files of a folder by name (rules in the module docstring)."""
    found: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    stray: list[Path] = []
    for path in sorted(folder.rglob("*")):
        stem = _nifti_stem(path)
        if stem is None or not path.is_file() or any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue
        m = _NNUNET.match(stem)
        if m and m["ch"] in ("0000", "0001"):
            found[m["case"]]["t1" if m["ch"] == "0000" else "stir"].append(path)
            continue
        m = _SEQ_SUFFIX.match(stem)
        if m:
            seq = "stir" if m["seq"].lower() in _STIR_TOKENS else "t1"
            found[m["case"]][seq].append(path)
            continue
        if stem.lower() in _T1_TOKENS + _STIR_TOKENS and path.parent != folder:
            seq = "stir" if stem.lower() in _STIR_TOKENS else "t1"
            found[path.parent.name][seq].append(path)
            continue
        stray.append(path)
    cases = []
    for cid in sorted(found):
        seqs = found[cid]
        problems = [f"{len(seqs[s])} {s.upper()} files ({', '.join(p.name for p in seqs[s])})"
                    for s in ("t1", "stir") if len(seqs[s]) > 1]
        missing = [s.upper() for s in ("t1", "stir") if not seqs[s]]
        error = None
        if missing:
            have = [p for s in ("t1", "stir") for p in seqs[s]]
            error = (f"no {' or '.join(missing)} file found for {', '.join(str(p) for p in have)}; "
                     "name the pair {case}_T1.nii.gz and {case}_STIR.nii.gz (or {case}_0000/_0001)")
        elif problems:
            error = f"ambiguous pairing: {'; '.join(problems)}; keep one T1 and one STIR per case"
        t1 = seqs["t1"][0] if len(seqs["t1"]) == 1 else None
        stir = seqs["stir"][0] if len(seqs["stir"]) == 1 else None
        cases.append(_case(cid, t1, stir, "nifti", error=error))
    for path in stray:
        cases.append(_case(_nifti_stem(path) or path.name, None, None, "nifti", error=(
            f"{path}: cannot tell whether this is T1 or STIR from its name; rename it "
            "{case}_T1.nii.gz / {case}_STIR.nii.gz or list it in a manifest")))
    return cases


def _cohort_cases(root: Path, split: str | None) -> list[CaseInput]:
    from nxp2seg.data.cohort import Cohort

    cohort = Cohort.open(root)
    table = cohort.cases
    if split:
        if "split" not in table.columns:
            raise InputError(f"{root / 'cases.csv'} has no split column; drop split={split}")
        table = table[table["split"].astype(str) == split]
        if table.empty:
            raise InputError(f"{root / 'cases.csv'}: no case in split {split!r}")
    out = []
    for row in table.itertuples(index=False):
        cid = str(row.case_id)
        t1, stir = cohort.t1_path(cid), cohort.stir_path(cid)
        miss = [str(p) for p in (t1, stir) if not p.exists()]
        err = f"missing image file(s): {', '.join(miss)}" if miss else None
        out.append(_case(cid, t1, stir, "cohort", station=str(row.station),
                         subject=str(row.subject_id), error=err))
    return out


def _manifest_path(value: Any, base: Path) -> Path | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == "":
        return None
    p = Path(str(value).strip()).expanduser()
    return p if p.is_absolute() else base / p


def _manifest_cases(manifest: Path) -> list[CaseInput]:
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"{manifest}: cannot read the manifest as CSV ({e})") from None
    need = {"case_id", "t1", "stir"}
    if not need <= set(table.columns):
        raise InputError(f"{manifest}: the manifest needs columns case_id, t1, stir "
                         f"(optional subject_id, station); it has {list(table.columns)}")
    dup = table["case_id"][table["case_id"].duplicated()].unique()
    base = manifest.parent
    out = []
    for row in table.to_dict("records"):
        cid = str(row["case_id"]).strip()
        t1, stir = _manifest_path(row["t1"], base), _manifest_path(row["stir"], base)
        station = str(row.get("station", "")).strip().lower() or None
        err = None
        if cid in dup:
            err = f"case id {cid!r} appears more than once in {manifest}; case ids must be unique"
        elif station is not None and station not in STATIONS:
            err = f"station {station!r} in {manifest}: use thigh or calf (or leave it empty to infer it)"
        else:
            miss = [f"{k}={p}" for k, p in (("t1", t1), ("stir", stir)) if p is None or not p.exists()]
            if miss:
                err = f"{manifest}: file or folder not found: {', '.join(miss)}"
        subject = str(row.get("subject_id", "")).strip() or None
        case = _case(cid, t1, stir, "manifest", station=station, subject=subject, error=err)
        if err is None and t1 is not None and t1.is_dir():
            _attach_dicom(case)
        out.append(case)
    return out


def _attach_dicom(case: CaseInput) -> None:
    """Manifest rows whose t1/stir are folders: read the one series in each."""
    from nxp2seg.inference.dicom import DicomError, find_series

    for key in ("t1", "stir"):
        folder = getattr(case, key)
        try:
            series = find_series(folder)
        except DicomError as e:
            case.error = str(e)
            return
        if len(series) != 1:
            case.error = (f"{folder}: expected one DICOM series for {key.upper()}, found {len(series)}"
                          + (f" ({', '.join(repr(s.description) for s in series)})" if series else "")
                          + "; point the manifest at the series' own folder")
            return
        setattr(case, f"{key}_series", series[0])
    case.source = "manifest-dicom"


def _dicom_cases(root: Path) -> list[CaseInput]:
    from nxp2seg.inference.dicom import find_series

    series = find_series(root)
    by_study: dict[str, list[Any]] = defaultdict(list)
    for s in series:
        by_study[s.study_uid].append(s)
    out = []
    for study in sorted(by_study, key=lambda u: str(_common_folder(by_study[u]))):
        group = by_study[study]
        folder = _common_folder(group)
        rel = folder.relative_to(root) if folder != root else Path(root.name)
        cid = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(rel.parts)).strip("._") or "case"
        t1 = [s for s in group if s.role == "t1"]
        stir = [s for s in group if s.role == "stir"]
        err = None
        if len(t1) != 1 or len(stir) != 1:
            desc = ", ".join(f"{s.description or '(no description)'}={s.role or 'unknown'}" for s in group)
            err = (f"{folder}: need exactly one T1 and one STIR series, found {len(t1)} T1 and "
                   f"{len(stir)} STIR among [{desc}]; list the series in a manifest "
                   "(case_id,t1,stir with the series folders) to choose them")
        body = {s.body_part for s in group if s.body_part}
        station = next((_BODY_PART[b] for b in body if b in _BODY_PART), None) if len(body) == 1 else None
        case = _case(cid, t1[0].folder if len(t1) == 1 else None,
                     stir[0].folder if len(stir) == 1 else None, "dicom",
                     station=station, error=err)
        if len(t1) == 1 and len(stir) == 1:
            case.t1_series, case.stir_series = t1[0], stir[0]
        out.append(case)
    return out


def _common_folder(series: list[Any]) -> Path:
    parts = [s.folder.parts for s in series]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path("/")


def _dedupe(cases: list[CaseInput]) -> list[CaseInput]:
    seen: dict[str, int] = defaultdict(int)
    for c in cases:
        seen[c.case_id] += 1
    for c in cases:
        if seen[c.case_id] > 1 and c.error is None:
            c.error = (f"case id {c.case_id!r} is found {seen[c.case_id]} times in the input; "
                       "give each exam its own name")
    return cases


def discover_cases(input_path: str | Path, manifest: str | Path | None = None,
                   split: str | None = None) -> list[CaseInput]:
    """The cases of ``input`` (cohort, NIfTI folder or DICOM folder) or of ``manifest``.

    Raises:
        InputError: the input does not exist, is empty, or the manifest cannot be used.
    """
    if manifest:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise InputError(f"manifest {manifest}: no such file")
        cases = _manifest_cases(manifest)
    else:
        if input_path is None or str(input_path) == "":
            raise InputError("no input: give input=PATH (a cohort, a NIfTI folder or a DICOM folder) "
                             "or manifest=CSV")
        root = Path(input_path)
        if not root.exists():
            raise InputError(f"input {root}: no such file or folder")
        if root.is_file():
            if root.suffix.lower() == ".csv":
                return discover_cases(None, manifest=root)
            raise InputError(f"input {root} is a file; give the folder holding the T1/STIR pairs, "
                             "or a manifest CSV")
        if (root / "dataset.json").exists() and (root / "cases.csv").exists():
            cases = _cohort_cases(root, split)
        elif any(_nifti_stem(p) is not None for p in root.rglob("*") if p.is_file()):
            cases = pair_nifti_files(root)
        else:
            cases = _dicom_cases(root)
    if not cases:
        where = manifest or input_path
        raise InputError(f"{where}: no cases found (no NIfTI pairs, no DICOM T1/STIR series); "
                         "see `python -m nxp2seg.predict --help` for the input layouts")
    return _dedupe(cases)
