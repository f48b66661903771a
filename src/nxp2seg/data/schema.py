"""Label schema, graded regions and grade scales: the domain constants, in one place.

Everything that knows what a label value, a region or a grade means reads it
from here, and this module reads it from a cohort's ``dataset.json`` (falling
back to the defaults of DESIGN.md). Nothing else re-types these tables.

Two label levels exist:

* **compartment** (default): 0 background, 1–12 the six compartments of each
  leg's thigh and calf, 13/14 subcutaneous right/left, 15 bone.
* **muscle**: every named muscle per side, with subcutaneous tissue and bone;
  each graded region (compartment and side) lists its member muscle labels,
  which is the roll-up that turns a muscle map into a compartment map.

Grades are read per *region*: a compartment of one side (``thigh_anterior_right``,
the same name at both label levels), or in a muscle-graded schema one muscle of
one side (``thigh_semimembranosus_right``) carrying the compartment it rolls up
to (:meth:`LabelSchema.compartment_schema`, ``grading.rollup_regions``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "COMPARTMENTS", "EXTENT_CLASSES", "FAT_SCALE", "GRADE_SCALES", "MUSCLES", "PATTERNS", "SIDES",
    "STATIONS", "STRUCTURES", "STRUCTURE_SIDES", "GradeScale", "LabelSchema", "Region",
    "SchemaError", "default_compartment_schema", "default_muscle_schema", "get_grade_scale",
    "muscle_region_name", "region_name",
]

STATIONS: tuple[str, ...] = ("thigh", "calf")
SIDES: tuple[str, ...] = ("right", "left")  # the patient's sides
COMPARTMENTS: dict[str, tuple[str, ...]] = {
    "thigh": ("anterior", "medial", "posterior"),
    "calf": ("anterior", "lateral", "posterior"),
}
MUSCLES: dict[str, dict[str, tuple[str, ...]]] = {
    "thigh": {
        "anterior": ("sartorius", "rectus_femoris", "vastus_lateralis", "vastus_medialis",
                     "vastus_intermedius"),
        "medial": ("gracilis", "adductor_longus", "adductor_brevis", "adductor_magnus"),
        "posterior": ("biceps_femoris_long_head", "biceps_femoris_short_head", "semimembranosus",
                      "semitendinosus"),
    },
    "calf": {
        "anterior": ("tibialis_anterior", "extensor_hallucis_longus", "extensor_digitorum_longus"),
        "lateral": ("peroneus_longus", "peroneus_brevis"),
        "posterior": ("gastrocnemius_medial_head", "gastrocnemius_lateral_head", "soleus",
                      "tibialis_posterior", "flexor_hallucis_longus", "flexor_digitorum_longus"),
    },
}
PATTERNS: tuple[str, ...] = ("none", "patchy", "mixed", "diffuse")
#: Spatial extent class of an edema grade; the pattern rule reads these.
EXTENT_CLASSES: tuple[str, ...] = ("none", "focal", "segmented", "global")


class SchemaError(ValueError):
    """A dataset.json label schema or grade scale that cannot be honoured."""


# ---------------------------------------------------------------------------
# grade scales
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeScale:
    """An ordinal grading scale 0..max_grade.

    Attributes:
        name: identifier used in ``dataset.json`` (``grade_scale``) and configs.
        levels: a reader-facing description of each integer grade, index = grade.
        extent: extent class of each grade (one of :data:`EXTENT_CLASSES`);
            the station pattern rule reads these.
        intensity: ``"none" | "mild" | "moderate"`` per grade, where the scale
            encodes signal intensity (``beltrame6``); ``"any"`` otherwise.
        fraction_cutoffs: where the scale grades the affected share of the
            region (``extent4``): the upper bounds of grades ``1..max_grade - 1``
            as fractions (``(0.30, 0.75)``: <30% is 1, 30-75% is 2, >75% is 3);
            :meth:`grade_of_fraction` reads them. ``None`` for scales that do not.
    """

    name: str
    levels: tuple[str, ...]
    extent: tuple[str, ...]
    intensity: tuple[str, ...]
    fraction_cutoffs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.levels)
        if n < 2 or len(self.extent) != n or len(self.intensity) != n:
            raise SchemaError(f"grade scale {self.name!r}: levels, extent and intensity differ in length")
        bad = [e for e in self.extent if e not in EXTENT_CLASSES]
        if bad:
            raise SchemaError(f"grade scale {self.name!r}: unknown extent classes {bad}")
        cuts = self.fraction_cutoffs
        if cuts is not None and (len(cuts) != n - 2 or list(cuts) != sorted(cuts)
                                 or not all(0 < c < 1 for c in cuts)):
            raise SchemaError(f"grade scale {self.name!r}: fraction_cutoffs must be {n - 2} "
                              f"increasing fractions in (0, 1), got {cuts}")

    @property
    def max_grade(self) -> int:
        return len(self.levels) - 1

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def grades(self) -> np.ndarray:
        """All integer grades, ``0..max_grade``."""
        return np.arange(self.n_levels)

    def to_int(self, grade: Any) -> np.ndarray:
        """Round continuous grades to the nearest integer grade, clipped to the scale.

        Halves round up (2.5 -> 3), the usual reading of a mean of two raters.
        NaN stays NaN (returned as float then).
        """
        g = np.asarray(grade, dtype=float)
        out = np.floor(np.clip(g, 0, self.max_grade) + 0.5)
        if np.isnan(out).any():
            return out
        return out.astype(int)

    def grade_of_fraction(self, fraction: Any) -> Any:
        """The grade of an affected share of the region (``0..1``), on a scale with fraction cut-offs.

        0 for no affected tissue; then grade ``k`` up to and including cut-off
        ``k`` except the first (``extent4``: 0 < f < 0.30 is 1, 0.30 <= f <= 0.75
        is 2, f > 0.75 is 3). Element-wise; an int for a scalar.

        Raises:
            ValueError: the scale does not grade fractions.
        """
        if self.fraction_cutoffs is None:
            raise ValueError(f"grade scale {self.name!r} does not grade the affected fraction")
        f = np.asarray(fraction, dtype=float)
        cuts = np.asarray(self.fraction_cutoffs)
        grade = 1 + (f >= cuts[0]).astype(int) + (f[..., None] > cuts[1:]).sum(-1)
        out = np.where(f <= 0, 0, grade)
        return int(out) if out.ndim == 0 else out

    def contains(self, grade: Any) -> np.ndarray:
        """Element-wise: is the value an integer grade of this scale (NaN = not graded = True)."""
        g = np.asarray(grade, dtype=float)
        ok = np.isnan(g) | ((g >= 0) & (g <= self.max_grade) & (np.floor(g) == g))
        return ok


GRADE_SCALES: dict[str, GradeScale] = {
    "beltrame6": GradeScale(
        name="beltrame6",
        levels=(
            "absent",
            "mild, intrafascicular (focal)",
            "mild, intrafascicular, segmented",
            "mild, intrafascicular, global",
            "moderate, segmented",
            "moderate, global",
        ),
        extent=("none", "focal", "segmented", "global", "segmented", "global"),
        intensity=("none", "mild", "mild", "mild", "moderate", "moderate"),
    ),
    "extent4": GradeScale(
        name="extent4",
        levels=("none", "<30% of the muscle", "31-75% of the muscle", ">75% of the muscle"),
        extent=("none", "focal", "segmented", "global"),
        intensity=("none", "any", "any", "any"),
        fraction_cutoffs=(0.30, 0.75),
    ),
}

#: T1 fatty infiltration, per region.
FAT_SCALE = GradeScale(
    name="fat5",
    levels=("none", "traces", "<30%", "30-60%", ">60%"),
    extent=("none", "focal", "segmented", "segmented", "global"),
    intensity=("none", "any", "any", "any", "any"),
)


def get_grade_scale(name: str) -> GradeScale:
    """Look up an edema grade scale by name (``beltrame6`` or ``extent4``)."""
    try:
        return GRADE_SCALES[name]
    except KeyError:
        raise SchemaError(
            f"unknown grade scale {name!r}; choose one of {sorted(GRADE_SCALES)} "
            "(dataset.json 'grade_scale' or the config key 'grade_scale')"
        ) from None


# ---------------------------------------------------------------------------
# regions and label schema
# ---------------------------------------------------------------------------


def region_name(station: str, compartment: str, side: str) -> str:
    """Canonical region name, e.g. ``thigh_anterior_right``."""
    return f"{station}_{compartment}_{side}"


def muscle_region_name(station: str, muscle: str, side: str) -> str:
    """Canonical name of a muscle graded as a region, e.g. ``thigh_semimembranosus_right``."""
    return f"{station}_{muscle}_{side}"


@dataclass(frozen=True)
class Region:
    """A graded region: one compartment (or one muscle) of one leg at one station.

    Attributes:
        name: e.g. ``thigh_anterior_right`` (or ``thigh_semimembranosus_right``).
        station: ``thigh`` or ``calf``.
        compartment: e.g. ``anterior``; for a muscle, the compartment it rolls up to.
        side: the patient's side, ``right`` or ``left``.
        labels: label values (of the schema it belongs to) that make up the region.
        muscle: the muscle, when the region is one muscle (``None`` for a compartment).
    """

    name: str
    station: str
    compartment: str
    side: str
    labels: tuple[int, ...]
    muscle: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "compartment": self.compartment,
            "side": self.side,
            "station": self.station,
            "labels": list(self.labels),
        }
        if self.muscle is not None:
            d["muscle"] = self.muscle
        return d


def _default_regions_for(labels: Mapping[str, int], level: str, graded: str = "compartment"
                         ) -> dict[str, Region]:
    regions: dict[str, Region] = {}
    for station in STATIONS:
        for side in SIDES:
            for comp in COMPARTMENTS[station]:
                if graded == "muscle":
                    for m in MUSCLES[station][comp]:
                        name = muscle_region_name(station, m, side)
                        regions[name] = Region(name, station, comp, side, (labels[f"{m}_{side}"],), m)
                    continue
                name = region_name(station, comp, side)
                if level == "compartment":
                    members = (labels[name],)
                else:
                    members = tuple(labels[f"{m}_{side}"] for m in MUSCLES[station][comp])
                regions[name] = Region(name, station, comp, side, members)
    return regions


def _compartment_labels() -> dict[str, int]:
    labels = {"background": 0}
    v = 1
    for station in STATIONS:
        for side in SIDES:
            for comp in COMPARTMENTS[station]:
                labels[region_name(station, comp, side)] = v
                v += 1
    for name in STRUCTURES:  # 13, 14, 15
        labels[name] = v
        v += 1
    return labels


def _muscle_labels() -> dict[str, int]:
    labels = {"background": 0}
    v = 1
    for station in STATIONS:
        for side in SIDES:
            for comp in COMPARTMENTS[station]:
                for m in MUSCLES[station][comp]:
                    labels[f"{m}_{side}"] = v
                    v += 1
    for name in STRUCTURES:
        labels[name] = v
        v += 1
    return labels


#: Non-graded structures present in both schemas, with their station-free names.
STRUCTURES: tuple[str, ...] = ("subcutaneous_right", "subcutaneous_left", "bone")
#: Kind and side of each non-graded structure (``None``: not sided); graded regions carry
#: their side in :attr:`Region.side`. :mod:`nxp2seg.data.sides` reads both.
STRUCTURE_SIDES: dict[str, tuple[str, str | None]] = {
    "subcutaneous_right": ("subcutaneous", "right"),
    "subcutaneous_left": ("subcutaneous", "left"),
    "bone": ("bone", None),
}


@dataclass(frozen=True)
class LabelSchema:
    """Label values, their names, and the graded regions built from them.

    Attributes:
        labels: ``{name: value}`` as in nnU-Net's ``dataset.json``; ``background`` is 0.
        regions: graded regions ``{name: Region}``, in a fixed order
            (thigh right, thigh left, calf right, calf left; anterior first).
        level: ``"compartment"`` or ``"muscle"``.
    """

    labels: dict[str, int]
    regions: dict[str, Region]
    level: str = "compartment"
    _value_to_name: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.labels.get("background") != 0:
            raise SchemaError("dataset.json 'labels' must map 'background' to 0")
        values = list(self.labels.values())
        if len(set(values)) != len(values):
            dup = sorted({v for v in values if values.count(v) > 1})
            raise SchemaError(f"dataset.json 'labels' reuses values {dup}; each label needs its own value")
        if any((not isinstance(v, (int, np.integer))) or v < 0 or v > 255 for v in values):
            raise SchemaError("dataset.json 'labels' values must be integers in 0..255")
        known = set(values)
        for r in self.regions.values():
            if r.station not in STATIONS:
                raise SchemaError(f"region {r.name!r}: station {r.station!r} is not one of {STATIONS}")
            if r.side not in SIDES:
                raise SchemaError(f"region {r.name!r}: side {r.side!r} is not one of {SIDES}")
            if r.compartment not in COMPARTMENTS[r.station]:
                raise SchemaError(
                    f"region {r.name!r}: compartment {r.compartment!r} is not one of "
                    f"{COMPARTMENTS[r.station]} for station {r.station!r}"
                )
            missing = [v for v in r.labels if v not in known]
            if missing:
                raise SchemaError(f"region {r.name!r} lists label values {missing} that 'labels' does not define")
        object.__setattr__(self, "_value_to_name", {int(v): k for k, v in self.labels.items()})

    # -- lookups ----------------------------------------------------------
    @property
    def max_label(self) -> int:
        return max(self.labels.values())

    def name_of(self, value: int) -> str:
        return self._value_to_name[int(value)]

    def region_names(self, station: str | None = None) -> list[str]:
        """Graded region names, optionally of one station, in schema order."""
        return [n for n, r in self.regions.items() if station is None or r.station == station]

    @property
    def graded_level(self) -> str:
        """``"muscle"`` when the graded regions are single muscles (a region names its ``muscle``,
        or a compartment of one side holds several graded regions), else ``"compartment"``."""
        if any(r.muscle is not None for r in self.regions.values()):
            return "muscle"
        parts = [(r.station, r.compartment, r.side) for r in self.regions.values()]
        return "muscle" if len(set(parts)) < len(parts) else "compartment"

    def muscle_of(self, name: str) -> str | None:
        """The muscle a graded region is: its ``muscle``, else (muscle-graded schemas) the name
        of its one label without the ``_{side}`` ending; ``None`` for a compartment."""
        r = self.regions[name]
        if r.muscle is not None or self.graded_level == "compartment" or len(r.labels) != 1:
            return r.muscle
        label = self.name_of(r.labels[0])
        return label.removesuffix(f"_{r.side}")

    def compartment_schema(self) -> "LabelSchema":
        """Itself if compartment-graded; else one region per (station, compartment, side), named
        like the default compartment regions, whose labels are its muscles' (same label values)."""
        if self.graded_level == "compartment":
            return self
        members: dict[str, list[int]] = {}
        for r in self.regions.values():
            members.setdefault(region_name(r.station, r.compartment, r.side), []).extend(r.labels)
        regions = {region_name(st, c, sd): Region(region_name(st, c, sd), st, c, sd,
                                                  tuple(dict.fromkeys(members[region_name(st, c, sd)])))
                   for st in STATIONS for sd in SIDES for c in COMPARTMENTS[st]
                   if region_name(st, c, sd) in members}
        return LabelSchema(labels=dict(self.labels), regions=regions, level=self.level)

    def rollup(self) -> dict[str, str]:
        """Graded region -> the compartment region it rolls up to (identity for compartments)."""
        return {n: region_name(r.station, r.compartment, r.side) for n, r in self.regions.items()}

    def station_labels(self, station: str) -> set[int]:
        """Label values that may appear in a case of ``station``."""
        vals = {0}
        for r in self.regions.values():
            if r.station == station:
                vals.update(r.labels)
        for s in STRUCTURES:
            if s in self.labels:
                vals.add(self.labels[s])
        return vals

    def rollup_lut(self) -> np.ndarray:
        """Lookup table from this schema's values to the default compartment values.

        ``compartment_map = schema.rollup_lut()[label_map]``. Identity for the
        compartment schema.
        """
        comp = _compartment_labels()
        lut = np.zeros(self.max_label + 1, dtype=np.uint8)
        for r in self.regions.values():
            for v in r.labels:
                lut[v] = comp[region_name(r.station, r.compartment, r.side)]
        for s in STRUCTURES:
            if s in self.labels:
                lut[self.labels[s]] = comp[s]
        return lut

    # -- (de)serialisation ---------------------------------------------------
    def to_dataset_json(self) -> dict[str, Any]:
        """The ``labels`` and ``regions`` entries of ``dataset.json``."""
        return {
            "labels": dict(self.labels),
            "regions": {n: r.to_dict() for n, r in self.regions.items()},
            "label_level": self.level,
        }

    @classmethod
    def from_dataset_json(cls, d: Mapping[str, Any]) -> "LabelSchema":
        """Read the schema from a parsed ``dataset.json``.

        ``labels`` falls back to the default compartment schema; ``regions``
        falls back to the default regions when the label names allow it.
        """
        if "labels" not in d:
            return default_compartment_schema()
        raw = d["labels"]
        if not isinstance(raw, Mapping):
            raise SchemaError("dataset.json 'labels' must be an object {name: value}")
        labels: dict[str, int] = {}
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise SchemaError(
                    f"dataset.json label {k!r} has value {v!r}; nxp2seg needs one integer per label "
                    "(nnU-Net region-based label lists are not supported)"
                )
            labels[str(k)] = int(v)
        level = d.get("label_level")
        if "regions" in d:
            regions = {}
            for name, r in d["regions"].items():
                try:
                    regions[name] = Region(
                        name=name,
                        station=r["station"],
                        compartment=r["compartment"],
                        side=r["side"],
                        labels=tuple(int(x) for x in r["labels"]),
                        muscle=(str(r["muscle"]) if r.get("muscle") is not None else None),
                    )
                except (KeyError, TypeError, ValueError) as e:
                    raise SchemaError(
                        f"dataset.json region {name!r} must have station, compartment, side and labels ({e})"
                    ) from None
            if level is None:
                level = "compartment" if all(len(r.labels) == 1 for r in regions.values()) else "muscle"
        else:
            if all(n in labels for n in _compartment_labels()):
                level = level or "compartment"
            elif all(n in labels for n in _muscle_labels()):
                level = level or "muscle"
            else:
                raise SchemaError(
                    "dataset.json has custom 'labels' but no 'regions'; add 'regions' "
                    "(name -> station, compartment, side, labels) so grades can be read per region"
                )
            regions = _default_regions_for(labels, level)
        if level not in ("compartment", "muscle"):
            raise SchemaError(f"dataset.json 'label_level' must be 'compartment' or 'muscle', not {level!r}")
        return cls(labels=labels, regions=regions, level=level)


def default_compartment_schema() -> LabelSchema:
    """The compartment-level schema of DESIGN.md (values 0–15)."""
    labels = _compartment_labels()
    return LabelSchema(labels=labels, regions=_default_regions_for(labels, "compartment"), level="compartment")


def default_muscle_schema(graded: str = "compartment") -> LabelSchema:
    """The muscle-level schema: every muscle per side a label; graded per compartment (made of its
    muscles' labels), or with ``graded="muscle"`` per muscle (``thigh_semimembranosus_right``)."""
    if graded not in ("compartment", "muscle"):
        raise SchemaError(f"graded must be 'compartment' or 'muscle', not {graded!r}")
    labels = _muscle_labels()
    return LabelSchema(labels=labels, regions=_default_regions_for(labels, "muscle", graded),
                       level="muscle")
