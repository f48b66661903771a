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
* **folder** -- every file under it is looked at once
  (:func:`~nxp2seg.data.dicom_headers.scan_folder`); NIfTI and DICOM
  exams in one folder are each handled as what they are. NIfTI files
  (``*.nii``/``*.nii.gz``) are paired by name (:func:`pair_nifti_files`):

  1. nnU-Net channels: ``{case}_0000`` = T1, ``{case}_0001`` = STIR;
  2. a sequence token at the end of the name: ``{case}_T1`` / ``{case}-t1w`` and
     ``{case}_STIR`` / ``{case}_TIRM`` (any of ``_ - .`` as separator, any case);
  3. one folder per case: ``{case}/t1.nii.gz`` and ``{case}/stir.nii.gz`` (the
     file names are exactly the sequence token), case id = the folder's name.

  DICOM files (Part-10, without preamble, gzipped; single- or multi-frame)
  are grouped into studies, stations and roles
  (:func:`~nxp2seg.inference.dicom_select.select_exams`): one case per station
  of a study. Its case id carries no identifier: ``S`` + 10 hex digits of the
  SHA-256 of the StudyInstanceUID, then ``_thigh``/``_calf`` (``_station{k}``
  when unknown); the subject id is ``P`` + a digest of the patient's id, name
  and birth date. Both are stable across reruns. The log (not the outputs)
  names each case's folder. Files that look like images but cannot be used
  are listed in their study's case, or, without a study, in a failed case
  ``F{digest of the folder}`` per folder; a study with no MR image is a
  ``skipped`` case with its reason. Nothing that looks like imaging is
  dropped in silence.

The station comes from the manifest or ``cases.csv``; else from a ``thigh`` /
``calf`` token in the case id (DICOM: the slice positions and hints, see
:mod:`~nxp2seg.inference.dicom_select`); else it is left ``None`` and
inferred from the segmentation (reported as inferred). The subject id is the
case id without its station token (DICOM: the patient digest).

A manifest's ``t1``/``stir`` may name a DICOM folder holding several series:
the optional columns ``t1_series``/``stir_series`` pick one by SeriesNumber
or SeriesInstanceUID; without them, the folder's one axial series of that
role is taken (or the folder's only series).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nxp2seg.data.case_ids import CASE_ID_RULE, is_safe_case_id
from nxp2seg.data.schema import STATIONS
from nxp2seg.data.dicom_headers import DicomError, Scan, scan_folder
from nxp2seg.inference.dicom_select import Exam, describe, pick_series, select_exams
from nxp2seg.data.dicom_series import SeriesInfo, check_series, group_series, slice_spacing

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

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_T1_TOKENS = ("t1", "t1w")
_STIR_TOKENS = ("stir", "tirm", "ir")
_SEQ_SUFFIX = re.compile(r"^(?P<case>.+?)[_.-](?P<seq>t1w?|stir|tirm)$", re.IGNORECASE)
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


class InputError(ValueError):
    """The input as a whole cannot be read (no cases at all, a bad manifest)."""


@dataclass
class CaseInput:
    """One exam (one station) to predict.

    ``t1``/``stir`` are NIfTI files or DICOM series folders; ``t1_series`` /
    ``stir_series`` hold the :class:`~nxp2seg.data.dicom_series.SeriesInfo`
    of DICOM input. ``error`` set = the case is reported failed without running;
    ``skip`` set = it is listed ``skipped`` with that reason. ``root`` is the
    input folder and ``folder`` the exam's own folder: paths written to the
    outputs are made relative to them (:func:`private_text`). ``warnings`` are
    warning codes with their messages; ``unused`` lists the exam's series and
    files that were not used, each with the reason.
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
    skip: str | None = None
    root: Path | None = None
    folder: Path | None = None
    warnings: dict[str, str] = field(default_factory=dict)
    unused: list[dict[str, str]] = field(default_factory=list)

    @property
    def is_dicom(self) -> bool:
        return self.t1_series is not None


def safe_case_id(case_id: str) -> bool:
    """A case id usable as a folder name (:func:`nxp2seg.data.case_ids.is_safe_case_id`)."""
    return is_safe_case_id(case_id)


def private_text(text: str, case: CaseInput) -> str:
    """``text`` with the exam's folder and the input folder removed from its paths.

    Folder names above an exam (PACS viewers name them after the patient) never
    reach an output: a path inside the exam's folder is written relative to it,
    any other path under the input relative to the input.
    """
    for base in (case.folder, case.root):
        if base is None or str(base) in ("", ".", "/"):
            continue
        text = text.replace(f"{base}/", "")
        text = re.sub(re.escape(str(base)) + r"(?![\w.-])", ".", text)  # the folder itself, not a longer name
    return text


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
        error = f"case id {case_id!r} is not a safe folder name ({CASE_ID_RULE}); rename it"
    st = station if station in STATIONS else station_from_name(case_id)
    return CaseInput(case_id=case_id, subject_id=subject or subject_from_case(case_id), station=st,
                     t1=t1, stir=stir, source=source, error=error)


def pair_nifti_files(folder: Path, files: list[Path] | None = None) -> list[CaseInput]:
    """Pair T1 and STIR NIfTI files of a folder by name (rules in the module docstring).

    ``files``: the NIfTI files to pair (default: every file under ``folder``).
    """
    found: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    stray: list[Path] = []
    for path in sorted(files if files is not None else folder.rglob("*")):
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
    for c in cases:
        c.root = folder
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


def _manifest_cases(manifest: Path, channels: tuple[str, str] = ("t1", "stir")) -> list[CaseInput]:
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"{manifest}: cannot read the manifest as CSV ({e})") from None
    if tuple(channels) != ("t1", "stir"):  # e.g. a Dixon bundle: columns fat, water (channels 0, 1)
        if not set(channels) <= set(table.columns):
            raise InputError(f"{manifest}: the model reads channels {', '.join(c.upper() for c in channels)}: "
                             f"name the manifest's image columns {', '.join(channels)} "
                             f"(it has {list(table.columns)})")
        table = table.drop(columns=[c for c in ("t1", "stir") if c in table.columns])
        table = table.rename(columns=dict(zip(channels, ("t1", "stir"))))
    need = {"case_id", "t1", "stir"}
    if not need <= set(table.columns):
        raise InputError(f"{manifest}: the manifest needs columns case_id, t1, stir "
                         f"(optional subject_id, station, t1_series, stir_series); it has {list(table.columns)}")
    dup = table["case_id"][table["case_id"].duplicated()].unique()
    base = manifest.parent
    out = []
    stacks: dict[Path, list[SeriesInfo]] = {}  # a flat folder is scanned once for all its rows
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
        case.root = base
        if err is None and t1 is not None and t1.is_dir():
            _attach_dicom(case, row, stacks)
        out.append(case)
    return out


def _attach_dicom(case: CaseInput, row: dict[str, Any], cache: dict[Path, list[SeriesInfo]]) -> None:
    """Manifest rows whose t1/stir are folders: the series named in ``{t1,stir}_series``, else the
    folder's one axial series of that role, else its only series."""
    for key in ("t1", "stir"):
        folder = getattr(case, key)
        try:
            if folder not in cache:
                cache[folder] = group_series(scan_folder(folder))
            stacks = cache[folder]
            wanted = str(row.get(f"{key}_series", "") or "").strip()
            if wanted:
                chosen = pick_series(stacks, wanted, folder)
            else:
                fits = [s for s in stacks if s.role == key and s.plane == "axial"]
                chosen = stacks[0] if len(stacks) == 1 else fits[0] if len(fits) == 1 else None
                if chosen is None:
                    listing = "; ".join(describe(s, folder) for s in stacks) or "no DICOM image"
                    raise DicomError(f"{folder}: cannot tell which series is the {key.upper()} among "
                                     f"[{listing}]; add a {key}_series column to the manifest with its "
                                     "SeriesNumber or SeriesInstanceUID")
        except DicomError as e:
            case.error = str(e)
            return
        setattr(case, f"{key}_series", chosen)
    case.source = "manifest-dicom"
    _spacing_warnings(case)


def _spacing_warnings(case: CaseInput) -> None:
    """The ``uneven_slice_spacing`` warning for a DICOM case whose series are unevenly spaced."""
    for key in ("t1", "stir"):
        info = getattr(case, f"{key}_series")
        if info is None:
            continue
        try:
            check_series(info)
        except DicomError:
            continue  # refused when the case is read, with the reason
        sp = slice_spacing(info)
        if not sp.even:
            case.warnings["uneven_slice_spacing"] = " ".join(w for w in (
                case.warnings.get("uneven_slice_spacing"),
                (f"{key.upper()} {info.label}: slice positions leave an even grid by up to "
                f"{sp.deviation_mm:.2f} mm; resampled onto {sp.n_even} slices {sp.resampled_mm:.3g} mm apart "
                "(seg.nii.gz and seg.dcm are on that grid).")) if w)


def _folder_cases(root: Path) -> list[CaseInput]:
    """NIfTI pairs and DICOM exams of a folder, and a row for every file that looks like imaging but
    cannot be used (see the module docstring)."""
    scan = scan_folder(root)
    cases = pair_nifti_files(root, scan.nifti) if scan.nifti else []
    exams = select_exams(group_series(scan), root)
    cases.extend(_exam_case(e, root) for e in exams)
    cases.extend(_unusable_cases(scan, exams, cases, root))
    if scan.other:
        log.info("%s: not images, not used: %s", root,
                 ", ".join(f"{n} {kind}" for kind, n in sorted(scan.other.items())))
    return cases


def _exam_case(exam: Exam, root: Path) -> CaseInput:
    case = _case(exam.case_id, exam.t1.folder if exam.t1 else None, exam.stir.folder if exam.stir else None,
                 "dicom", station=exam.station, subject=exam.subject_id, error=exam.error)
    case.t1_series, case.stir_series = exam.t1, exam.stir
    case.root, case.folder = root, exam.folder
    case.skip = exam.skip
    case.warnings.update(exam.warnings)
    case.unused = [{"series": describe(s, exam.folder), "reason": reason} for s, reason in exam.unused]
    if case.error is None:
        _spacing_warnings(case)
    log.info("case %s <- %s", case.case_id, exam.folder)
    return case


def _unusable_cases(scan: Scan, exams: list[Exam], cases: list[CaseInput], root: Path) -> list[CaseInput]:
    """Unusable files go into their study's first case (warning ``files_unusable``), or, without a
    study there, into one failed case per folder."""
    first: dict[str, CaseInput] = {}
    for exam, case in zip(exams, cases[len(cases) - len(exams):]):
        first.setdefault(exam.study_uid, case)
    by_folder: dict[Path, list[Any]] = defaultdict(list)
    for item in scan.unusable:
        case = first.get(item.study_uid or "")
        if case is None:
            by_folder[item.path.parent].append(item)
            continue
        rel = private_text(str(item.path), case)
        case.unused.append({"file": rel, "reason": item.reason})
        case.warnings["files_unusable"] = f"{sum('file' in u for u in case.unused)} file(s) of this study " \
                                          "look like images but cannot be used (listed under unused)"
    out = []
    for folder, items in sorted(by_folder.items()):
        digest = hashlib.sha256(str(folder.relative_to(root)).encode("utf-8", "replace")).hexdigest()[:10]
        listing = "; ".join(f"{i.path.name}: {i.reason}" for i in items)
        case = _case(f"F{digest}", None, None, "dicom", error=(
            f"{len(items)} file(s) in this folder look like images but cannot be used: {listing}"))
        case.root, case.folder = root, folder
        log.info("case %s <- %s (files that cannot be used)", case.case_id, folder)
        out.append(case)
    return out


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
                   split: str | None = None, channels: tuple[str, str] = ("t1", "stir")) -> list[CaseInput]:
    """The cases of ``input`` (cohort, NIfTI folder or DICOM folder) or of ``manifest``.

    ``channels``: the model's channel names in lower case, the manifest's image
    columns (``t1, stir``, or ``fat, water`` for a Dixon model).

    Raises:
        InputError: the input does not exist, is empty, or the manifest cannot be used.
    """
    if manifest:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise InputError(f"manifest {manifest}: no such file")
        cases = _manifest_cases(manifest, channels)
    else:
        if input_path is None or str(input_path) == "":
            raise InputError("no input: give input=PATH (a cohort, a NIfTI folder or a DICOM folder) "
                             "or manifest=CSV")
        root = Path(input_path)
        if not root.exists():
            raise InputError(f"input {root}: no such file or folder")
        if root.is_file():
            if root.suffix.lower() == ".csv":
                return discover_cases(None, manifest=root, channels=channels)
            raise InputError(f"input {root} is a file; give the folder holding the T1/STIR pairs, "
                             "or a manifest CSV")
        if (root / "dataset.json").exists() and (root / "cases.csv").exists():
            cases = _cohort_cases(root, split)
        else:
            cases = _folder_cases(root)
    if not cases:
        where = manifest or input_path
        raise InputError(f"{where}: no cases found (no NIfTI file, no DICOM image); "
                         "see `python -m nxp2seg.predict --help` for the input layouts")
    return _dedupe(cases)
