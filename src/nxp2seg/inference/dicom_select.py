"""Exams from DICOM stacks, grouped the way a reader would: study, then station, then role.

:func:`select_exams` turns the stacks of a folder
(:func:`~nxp2seg.data.dicom_series.find_series`) into :class:`Exam` s:

1. **study**: StudyInstanceUID;
2. **station**: the study's axial T1 and STIR candidates are clustered by the
   table positions they cover (two stacks are one station when their
   superior-inferior ranges overlap by half of the shorter one). With two
   stations, the superior one is the thigh and the inferior one the calf;
   BodyPartExamined (``THIGH``, ``UPPER LEG``, ``FEMUR``; ``CALF``,
   ``LOWER LEG``, ``LOWER_LEG``, ``TIBIA``) or a ``thigh``/``calf`` word of the
   description is a hint, which the positions overrule with the warning
   ``body_part_overruled``. ``LEG``, ``EXTREMITY``, ``LOWER LIMB`` say only
   "lower limb": a lone station with those is left for the network to tell;
3. **role** (:func:`~nxp2seg.data.dicom_roles.classify`: parameters
   first, then the description). Non-axial stacks, localizers, Dixon images,
   fat-suppressed or contrast-enhanced T1 and other weightings are not used,
   each with its reason;
4. **repeats**: a station with several T1 (or STIR) candidates takes the
   latest complete one (SeriesDate/SeriesTime, then SeriesNumber; complete =
   it passes :func:`~nxp2seg.data.dicom_series.check_series`), with the
   warning ``series_repeated``.

When a station lacks a T1 or a STIR, its :class:`Exam` has an error that lists
every stack of the study (:func:`describe`: SeriesNumber, description,
orientation, TI, slice count, folder, role or reason) and says how to choose
with a manifest (``t1_series``/``stir_series`` by SeriesNumber or
SeriesInstanceUID, which works in a flat folder).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nxp2seg.data.dicom_headers import DicomError
from nxp2seg.data.dicom_series import SeriesInfo, check_series

__all__ = ["Exam", "describe", "pick_series", "select_exams", "study_key"]

_THIGH_PARTS = {"THIGH", "UPPER LEG", "UPPER_LEG", "UPPERLEG", "FEMUR", "HIP AND THIGH"}
_CALF_PARTS = {"CALF", "LOWER LEG", "LOWER_LEG", "LOWERLEG", "TIBIA", "FIBULA", "SHANK"}
_LIMB_PARTS = {"LEG", "EXTREMITY", "LOWER LIMB", "LOWER_LIMB", "LOWEREXTREMITY", "LOWER EXTREMITY", "LEGS"}
_THIGH_TEXT = re.compile(r"(?<![A-Z])(THIGHS?|FEMUR|OBERSCHENKEL|CUISSES?)(?![A-Z])", re.IGNORECASE)
_CALF_TEXT = re.compile(r"(?<![A-Z])(CALF|CALVES|LOWER[-_ ]?LEGS?|UNTERSCHENKEL|JAMBES?|MOLLETS?)(?![A-Z])",
                        re.IGNORECASE)


@dataclass
class Exam:
    """One station of one study: the chosen T1 and STIR stacks, or an error."""

    study_uid: str
    station: str | None
    index: int  # 1.. from superior to inferior among the study's stations
    n_stations: int
    t1: SeriesInfo | None = None
    stir: SeriesInfo | None = None
    error: str | None = None
    skip: str | None = None
    warnings: dict[str, str] = field(default_factory=dict)
    unused: list[tuple[SeriesInfo, str]] = field(default_factory=list)
    folder: Path = Path(".")
    patient: str = ""

    @property
    def case_id(self) -> str:
        """``S{digest of StudyInstanceUID}`` + ``_thigh``/``_calf`` (``_station{k}`` when unknown)."""
        base = f"S{study_key(self.study_uid)}"
        if self.station is not None:
            return f"{base}_{self.station}"
        return base if self.n_stations == 1 else f"{base}_station{self.index}"

    @property
    def subject_id(self) -> str:
        """``P{patient digest}`` (:func:`~nxp2seg.data.dicom_headers.patient_key`), else the study's."""
        return f"P{self.patient}" if self.patient else f"S{study_key(self.study_uid)}"


def study_key(study_uid: str) -> str:
    """10 hex digits of SHA-256 of the StudyInstanceUID: stable across reruns, carries no identifier."""
    return hashlib.sha256(study_uid.encode("ascii", "replace")).hexdigest()[:10]


def describe(info: SeriesInfo, root: Path | None = None, why_unused: str | None = None) -> str:
    """One stack for a person choosing: number, description, orientation, TI, slices, folder, role
    (and why it is not used, when it is not)."""
    acq = info.acquisition
    ti = f"TI {acq.inversion_time:g} ms" if acq.inversion_time is not None else "no TI"
    folder = info.folder
    if root is not None:
        try:
            folder = info.folder.relative_to(root)
        except ValueError:
            pass
    role = info.role.upper() if info.role else "neither T1 nor STIR"
    if why_unused or not info.role:
        role += f", not used: {why_unused or info.role_reason}"
    number = info.series_number if info.series_number is not None else "-"
    desc = info.description or "(no description)"
    stack = f" [{info.stack}]" if info.stack else ""
    return (f"SeriesNumber {number} {desc!r}{stack}, {info.plane}, {ti}, {info.n_slices} slices, "
            f"folder {str(folder) or '.'}: {role}")


def select_exams(series: list[SeriesInfo], root: Path) -> list[Exam]:
    """The exams of ``series`` (all found under ``root``), in study then station order."""
    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for s in series:
        by_study[s.study_uid or f"(no study uid) {s.folder}"].append(s)
    exams = []
    for study in sorted(by_study, key=lambda u: (str(_common_folder(by_study[u])), u)):
        exams.extend(_study_exams(study, by_study[study], root))
    return exams


def _study_exams(study: str, stacks: list[SeriesInfo], root: Path) -> list[Exam]:
    folder = _common_folder(stacks)
    patient = next((s.patient for s in stacks if s.patient), "")
    unused: list[tuple[SeriesInfo, str]] = []
    candidates = []
    for s in stacks:
        if s.modality and s.modality != "MR":
            unused.append((s, f"{s.modality}, not MR"))
        elif s.role is None:
            unused.append((s, s.role_reason))
        elif s.plane != "axial":
            unused.append((s, f"{s.plane} slices (nxp2seg reads axial T1 and STIR)"))
        elif s.n_slices < 3:
            unused.append((s, f"only {s.n_slices} slice(s)"))
        else:
            candidates.append(s)
    stations = _stations(candidates)
    why = {id(s): r for s, r in unused}
    listing = "; ".join(describe(s, folder, why.get(id(s))) for s in stacks)
    if not stations:
        exam = Exam(study_uid=study, station=None, index=1, n_stations=1, folder=folder, patient=patient,
                    unused=unused)
        modalities = sorted({s.modality or "unknown" for s in stacks})
        if "MR" not in modalities:
            exam.skip = f"not an MR study ({', '.join(modalities)}: [{listing}]); nothing to predict"
            return [exam]
        exam.error = (f"no axial T1 and STIR series in this study: [{listing}]; choose them in a manifest "
                      "(case_id,t1,stir,t1_series,stir_series with the folder and the SeriesNumber or "
                      "SeriesInstanceUID of each)")
        return [exam]
    names, warnings = _station_names(stations)
    exams = []
    for k, (members, name) in enumerate(zip(stations, names), start=1):
        exam = Exam(study_uid=study, station=name, index=k, n_stations=len(stations), folder=folder,
                    patient=patient, unused=list(unused) if k == 1 else [])
        exam.warnings.update(warnings)
        for role in ("t1", "stir"):
            chosen, dropped, warning = _choose([s for s in members if s.role == role])
            setattr(exam, role, chosen)
            exam.unused.extend(dropped)
            if warning:
                exam.warnings["series_repeated"] = " ".join(
                    w for w in (exam.warnings.get("series_repeated"), warning) if w)
        missing = [r.upper() for r in ("t1", "stir") if getattr(exam, r) is None]
        if missing:
            where = f"the {name} station" if name else f"station {k} of {len(stations)}"
            exam.error = (f"no {' and no '.join(missing)} series for {where} of this study among [{listing}]; "
                          "choose the series in a manifest (case_id,t1,stir,t1_series,stir_series with "
                          "the folder and the SeriesNumber or SeriesInstanceUID of each)")
        exams.append(exam)
    return exams


def _z_range(s: SeriesInfo) -> tuple[float, float]:
    z = [f.position[2] for f in s.frames]
    return min(z), max(z)


def _stations(candidates: list[SeriesInfo]) -> list[list[SeriesInfo]]:
    """Candidates clustered by the superior-inferior range they cover, superior station first."""
    groups: list[list[SeriesInfo]] = []
    for s in sorted(candidates, key=lambda s: -sum(_z_range(s))):
        lo, hi = _z_range(s)
        for g in groups:
            glo, ghi = min(_z_range(x)[0] for x in g), max(_z_range(x)[1] for x in g)
            overlap = min(hi, ghi) - max(lo, glo)
            if overlap >= 0.5 * max(min(hi - lo, ghi - glo), 1e-3):
                g.append(s)
                break
        else:
            groups.append([s])
    return sorted(groups, key=lambda g: -np.mean([sum(_z_range(s)) for s in g]))


def _hint(members: list[SeriesInfo]) -> str | None:
    """The station BodyPartExamined or the descriptions name (``None``: none, or both)."""
    found = set()
    for s in members:
        part = s.body_part.replace("-", " ")
        if part in _THIGH_PARTS:
            found.add("thigh")
        elif part in _CALF_PARTS:
            found.add("calf")
        if _THIGH_TEXT.search(s.description):
            found.add("thigh")
        if _CALF_TEXT.search(s.description):
            found.add("calf")
    return found.pop() if len(found) == 1 else None


def _station_names(stations: list[list[SeriesInfo]]) -> tuple[list[str | None], dict[str, str]]:
    hints = [_hint(g) for g in stations]
    warnings: dict[str, str] = {}
    if len(stations) == 2:
        names: list[str | None] = ["thigh", "calf"]
        wrong = [(h, n) for h, n in zip(hints, names) if h is not None and h != n]
        if wrong:
            warnings["body_part_overruled"] = (
                "BodyPartExamined or the series description says "
                + ", ".join(f"{h} for the {n} station" for h, n in wrong)
                + "; the slice positions (the superior station is the thigh, the inferior the calf) "
                  "were followed")
        return names, warnings
    if len(stations) == 1:
        return [hints[0]], warnings
    named = [h if h is not None and hints.count(h) == 1 else None for h in hints]
    return named, warnings


def _choose(found: list[SeriesInfo]) -> tuple[SeriesInfo | None, list[tuple[SeriesInfo, str]], str | None]:
    """The latest complete stack of ``found``, the others with their reason, and a warning if repeated."""
    if not found:
        return None, [], None
    if len(found) == 1:
        return found[0], [], None
    complete, broken = [], []
    for s in found:
        try:
            check_series(s)
            complete.append(s)
        except DicomError as e:
            broken.append((s, f"a repeat that cannot be used ({str(e).split(': ', 2)[-1]})"))
    pool = complete or [s for s, _ in broken]
    chosen = max(pool, key=lambda s: (s.time, s.series_number or 0))
    dropped = [(s, f"an earlier repeat of SeriesNumber {chosen.series_number}") for s in complete
               if s is not chosen] + [(s, r) for s, r in broken if s is not chosen]
    role = chosen.role.upper() if chosen.role else "?"
    warning = (f"{len(found)} {role} series for one station ("
               + ", ".join(f"SeriesNumber {s.series_number} {s.description!r}" for s in found)
               + f"); used the latest complete one, SeriesNumber {chosen.series_number}")
    return chosen, dropped, warning


def pick_series(stacks: list[SeriesInfo], wanted: str, folder: Path) -> SeriesInfo:
    """The stack of ``stacks`` whose SeriesInstanceUID or SeriesNumber is ``wanted`` (a manifest's
    ``t1_series``/``stir_series``); :class:`DicomError` listing the candidates otherwise.

    A series of several stacks is narrowed to its axial stack when there is one.
    """
    wanted = wanted.strip()
    hits = [s for s in stacks if s.series_uid == wanted or (
        s.series_number is not None and wanted.isdigit() and int(wanted) == s.series_number)]
    axial = [s for s in hits if s.plane == "axial"]
    hits = axial if len(axial) >= 1 and len(hits) > 1 else hits
    if len(hits) == 1:
        return hits[0]
    listing = "; ".join(describe(s, folder) for s in stacks)
    what = "no series" if not hits else f"{len(hits)} stacks"
    raise DicomError(f"{folder}: {what} with SeriesNumber or SeriesInstanceUID {wanted!r} among [{listing}]; "
                     "give the SeriesInstanceUID when numbers repeat")


def _common_folder(series: list[SeriesInfo]) -> Path:
    parts = [s.folder.parts for s in series]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path("/")
