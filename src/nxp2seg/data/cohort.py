"""Read and write a labelled cohort in the dataset contract of DESIGN.md.

::

    COHORT/
      dataset.json                      channel_names, labels, regions, grade_scale, ...
      imagesTr/{case_id}_0000.nii.gz    T1
      imagesTr/{case_id}_0001.nii.gz    STIR
      labelsTr/{case_id}.nii.gz         optional
      cases.csv                         case_id, subject_id, station, split
      grades.csv                        case_id, rater, region, edema_grade, fat_grade,
                                        fascial_edema, subcutaneous_edema
      patterns.csv                      case_id, rater, pattern
      clinical.csv                      optional: subject_id, clinical columns

Reading parses but does not judge: :mod:`nxp2seg.data.verify` judges.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd

from nxp2seg.data.schema import (
    GradeScale,
    LabelSchema,
    SchemaError,
    default_compartment_schema,
    get_grade_scale,
)
from nxp2seg.io import atomic_write_text, save_nifti, write_csv

__all__ = [
    "CHANNELS",
    "CHANNEL_SETS",
    "DIXON_CHANNELS",
    "CASE_COLUMNS",
    "GRADE_COLUMNS",
    "PATTERN_COLUMNS",
    "DatasetDescription",
    "Cohort",
    "CohortWriter",
    "CohortError",
]

#: nnU-Net channel index -> modality (the default: T1 and STIR).
CHANNELS: dict[str, str] = {"0": "T1", "1": "STIR"}
#: Dixon: channel 0 is always the fat-bright image, channel 1 the fat-suppressed one.
DIXON_CHANNELS: dict[str, str] = {"0": "FAT", "1": "WATER"}
#: Every channel naming nxp2seg reads.
CHANNEL_SETS: tuple[dict[str, str], ...] = (CHANNELS, DIXON_CHANNELS)
CASE_COLUMNS = ["case_id", "subject_id", "station", "split"]
GRADE_COLUMNS = [
    "case_id",
    "rater",
    "region",
    "edema_grade",
    "fat_grade",
    "fascial_edema",
    "subcutaneous_edema",
]
PATTERN_COLUMNS = ["case_id", "rater", "pattern"]
#: pandas' default missing-value markers, read as missing outside the id columns.
_NA_MARKERS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
               "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
_ID_COLUMNS = {"case_id": str, "subject_id": str, "rater": str, "region": str, "station": str, "split": str, "pattern": str}


class CohortError(ValueError):
    """A cohort that cannot be read at all (missing folder or dataset.json)."""


@dataclass
class DatasetDescription:
    """The parsed ``dataset.json`` of a cohort.

    Attributes:
        schema: label schema (labels, graded regions, level).
        grade_scale: edema grade scale (``beltrame6`` by default).
        channel_names: ``{"0": "T1", "1": "STIR"}`` or, Dixon, ``{"0": "FAT", "1": "WATER"}``.
        raters: rater ids the tables may use; ``None`` = not declared (not checked).
        annotated: the label names the masks delineate (partial labels); the others
            are unknown in them, not background. ``None``: every label.
        num_training: number of cases in ``imagesTr``.
        name, description: free text.
        extra: any other keys, kept on round trip.
    """

    schema: LabelSchema = field(default_factory=default_compartment_schema)
    grade_scale: GradeScale = field(default_factory=lambda: get_grade_scale("beltrame6"))
    channel_names: dict[str, str] = field(default_factory=lambda: dict(CHANNELS))
    raters: list[str] | None = None
    annotated: list[str] | None = None
    num_training: int = 0
    file_ending: str = ".nii.gz"
    name: str = "nxp2seg cohort"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN = {
        "name",
        "description",
        "channel_names",
        "labels",
        "regions",
        "label_level",
        "file_ending",
        "grade_scale",
        "numTraining",
        "raters",
        "annotated",
    }

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "channel_names": dict(self.channel_names),
            **self.schema.to_dataset_json(),
            "file_ending": self.file_ending,
            "grade_scale": self.grade_scale.name,
            "numTraining": int(self.num_training),
        }
        if self.raters is not None:
            d["raters"] = list(self.raters)
        if self.annotated is not None:
            d["annotated"] = list(self.annotated)
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetDescription":
        raw_channels = d.get("channel_names", CHANNELS)
        if not isinstance(raw_channels, Mapping):
            raise SchemaError(f"dataset.json channel_names must be an object like {CHANNELS}, not {raw_channels!r}")
        channel_names = {str(k): str(v) for k, v in raw_channels.items()}
        if channel_names not in CHANNEL_SETS:
            raise SchemaError(
                f"dataset.json channel_names is {channel_names}; nxp2seg reads {CHANNELS} "
                f"(channel 0 = T1 as *_0000, channel 1 = STIR as *_0001) or, Dixon, {DIXON_CHANNELS} "
                "(channel 0 = the fat image, channel 1 = the water image)"
            )
        file_ending = d.get("file_ending", ".nii.gz")
        if file_ending not in (".nii.gz", ".nii"):
            raise SchemaError(f"dataset.json file_ending {file_ending!r}: use '.nii.gz' or '.nii'")
        if "regions" in d and not isinstance(d["regions"], Mapping):
            raise SchemaError("dataset.json 'regions' must be an object {name: {station, compartment, side, labels}}")
        raters = d.get("raters")
        if raters is not None and (
            not isinstance(raters, list) or not all(isinstance(r, (str, int)) and str(r).strip() for r in raters)
        ):
            raise SchemaError(f"dataset.json raters must be a list of rater ids like [\"R1\", \"R2\"], not {raters!r}")
        grade_scale = d.get("grade_scale", "beltrame6")
        if not isinstance(grade_scale, str):
            raise SchemaError(f"dataset.json grade_scale must be a scale name like \"beltrame6\", not {grade_scale!r}")
        num_training = d.get("numTraining", 0)
        if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
            raise SchemaError(f"dataset.json numTraining must be a whole number of cases, not {num_training!r}")
        schema = LabelSchema.from_dataset_json(d)
        return cls(
            schema=schema,
            annotated=_check_annotated(d.get("annotated"), schema),
            grade_scale=get_grade_scale(grade_scale),
            channel_names=channel_names,
            raters=[str(r).strip() for r in raters] if raters is not None else None,
            num_training=num_training,
            file_ending=file_ending,
            name=str(d.get("name", "nxp2seg cohort")),
            description=str(d.get("description", "")),
            extra={k: v for k, v in d.items() if k not in cls._KNOWN},
        )

    def unannotated_values(self) -> list[int]:
        """Label values the masks do not delineate (``[]`` when every label is annotated)."""
        if self.annotated is None:
            return []
        keep = set(self.annotated) | {"background"}
        return sorted(v for n, v in self.schema.labels.items() if n not in keep)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetDescription":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise CohortError(f"{path}: no dataset.json; a cohort folder needs one (see docs/dataset.md)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CohortError(f"{path}: not valid JSON ({e}); fix the file") from None
        except OSError as e:
            raise CohortError(f"{path}: cannot be read ({e.strerror or e}); check that it is a readable file") from None
        if not isinstance(d, dict):
            raise CohortError(f"{path}: dataset.json must hold a JSON object")
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _check_annotated(annotated: Any, schema: LabelSchema) -> list[str] | None:
    """A ``dataset.json`` ``annotated`` list, checked against the schema's labels."""
    if annotated is None:
        return None
    if not isinstance(annotated, list) or not all(isinstance(a, str) for a in annotated):
        raise SchemaError(f"dataset.json 'annotated' must be a list of label names, not {annotated!r}")
    unknown = [n for n in annotated if n not in schema.labels]
    if unknown:
        raise SchemaError(f"dataset.json 'annotated' names labels the schema does not define: {unknown}")
    if "background" in annotated:
        raise SchemaError("dataset.json 'annotated': leave 'background' out (it is always annotated)")
    return list(annotated)


def read_table(path: Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a contract CSV with id columns as strings and blanks as missing.

    In id columns (case_id, subject_id, rater, region, station, split, pattern)
    only a blank cell is missing, so a rater called ``NA`` stays ``"NA"``; other
    columns read pandas' usual missing markers (``NA``, ``NaN``, ``null``, ...).
    """
    header = pd.read_csv(path, nrows=0).columns
    na_values = {c: ([""] if c in _ID_COLUMNS else list(_NA_MARKERS)) for c in header}
    df = pd.read_csv(path, dtype=dict(_ID_COLUMNS), keep_default_na=False, na_values=na_values)
    for c in df.columns:
        if c in _ID_COLUMNS:
            stripped = df[c].astype("string").str.strip()
            df[c] = stripped.astype(object).where(stripped.notna() & (stripped != ""), None)
    if columns is not None:
        for c in columns:
            if c not in df.columns:
                df[c] = None if c in _ID_COLUMNS else pd.NA
    return df


@dataclass
class Cohort:
    """A cohort on disk: its description and tables, with paths to its images.

    Use :meth:`open`; check it with :func:`nxp2seg.data.verify.verify_cohort`
    before training on it.
    """

    root: Path
    dataset: DatasetDescription
    cases: pd.DataFrame
    grades: pd.DataFrame
    patterns: pd.DataFrame
    clinical: pd.DataFrame | None = None

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Cohort":
        root = Path(root)
        if not root.is_dir():
            raise CohortError(f"{root}: no such cohort folder")
        dataset = DatasetDescription.load(root / "dataset.json")
        cases_path = root / "cases.csv"
        if not cases_path.exists():
            raise CohortError(f"{cases_path}: missing; a cohort needs cases.csv (case_id, subject_id, station)")
        cases = read_table(cases_path, CASE_COLUMNS)
        grades = read_table(root / "grades.csv", GRADE_COLUMNS) if (root / "grades.csv").exists() else pd.DataFrame(columns=GRADE_COLUMNS)
        patterns = read_table(root / "patterns.csv", PATTERN_COLUMNS) if (root / "patterns.csv").exists() else pd.DataFrame(columns=PATTERN_COLUMNS)
        clinical = read_table(root / "clinical.csv") if (root / "clinical.csv").exists() else None
        return cls(root=root, dataset=dataset, cases=cases, grades=grades, patterns=patterns, clinical=clinical)

    # -- paths ------------------------------------------------------------
    @property
    def case_ids(self) -> list[str]:
        return [str(c) for c in self.cases["case_id"]]

    def image_path(self, case_id: str, channel: int) -> Path:
        """``imagesTr/{case_id}_{channel:04d}{file_ending}`` (0 = T1, 1 = STIR)."""
        return self.root / "imagesTr" / f"{case_id}_{channel:04d}{self.dataset.file_ending}"

    def t1_path(self, case_id: str) -> Path:
        return self.image_path(case_id, 0)

    def stir_path(self, case_id: str) -> Path:
        return self.image_path(case_id, 1)

    def label_path(self, case_id: str) -> Path:
        return self.root / "labelsTr" / f"{case_id}{self.dataset.file_ending}"

    def has_label(self, case_id: str) -> bool:
        return self.label_path(case_id).exists()

    def station_of(self, case_id: str) -> str:
        row = self.cases.loc[self.cases["case_id"] == case_id]
        if row.empty:
            raise KeyError(f"case {case_id!r} is not in {self.root / 'cases.csv'}")
        return str(row["station"].iloc[0])

    def subject_of(self, case_id: str) -> str:
        row = self.cases.loc[self.cases["case_id"] == case_id]
        if row.empty:
            raise KeyError(f"case {case_id!r} is not in {self.root / 'cases.csv'}")
        return str(row["subject_id"].iloc[0])


class CohortWriter:
    """Write a cohort in the dataset contract, file by file, atomically.

    Args:
        root: the cohort folder; created if missing. Refuses a folder that already
            holds a ``dataset.json`` unless ``overwrite=True``.
        dataset: its description; ``num_training`` is set by :meth:`finish`.
    """

    def __init__(self, root: str | os.PathLike, dataset: DatasetDescription, overwrite: bool = False):
        self.root = Path(root)
        if (self.root / "dataset.json").exists() and not overwrite:
            raise CohortError(
                f"{self.root} already holds a cohort (dataset.json); choose another folder "
                "or pass overwrite=true to replace it"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.dataset = dataset
        self._n_images = 0

    def write_case(
        self,
        case_id: str,
        t1: nib.Nifti1Image,
        stir: nib.Nifti1Image,
        label: nib.Nifti1Image | None = None,
    ) -> None:
        ending = self.dataset.file_ending
        save_nifti(t1, self.root / "imagesTr" / f"{case_id}_0000{ending}")
        save_nifti(stir, self.root / "imagesTr" / f"{case_id}_0001{ending}")
        if label is not None:
            save_nifti(label, self.root / "labelsTr" / f"{case_id}{ending}")
        self._n_images += 1

    def write_tables(
        self,
        cases: pd.DataFrame,
        grades: pd.DataFrame,
        patterns: pd.DataFrame,
        clinical: pd.DataFrame | None = None,
    ) -> None:
        write_csv(cases.reindex(columns=CASE_COLUMNS), self.root / "cases.csv")
        write_csv(grades.reindex(columns=GRADE_COLUMNS), self.root / "grades.csv")
        write_csv(patterns.reindex(columns=PATTERN_COLUMNS), self.root / "patterns.csv")
        if clinical is not None:
            write_csv(clinical, self.root / "clinical.csv")

    def finish(self, num_training: int | None = None) -> Path:
        """Write ``dataset.json`` last, so a cohort with one is complete."""
        self.dataset.num_training = int(num_training if num_training is not None else self._n_images)
        return self.dataset.save(self.root / "dataset.json")
