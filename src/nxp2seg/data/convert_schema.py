"""The converted cohort's label schema, and source label maps mapped onto it.

At **compartment** level the schema is the default one and every muscle or
group rolls up to its compartment. At **muscle** level it is the default
muscle schema plus one label per side for each group a source uses where it
merges muscles (``adductors_right``: a member of ``thigh_medial_right``), so
the roll-up to compartments stays exact.

``annotated`` lists the schema's structures the source tables delineate
(``dataset.json``; the others are unknown in those masks, not background),
or is ``None`` when the masks delineate everything of their stations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from nxp2seg.data.convert_labels import GROUPS, AliasTable, LabelTableError, Target
from nxp2seg.data.convert_sides import split_sides
from nxp2seg.data.schema import (
    SIDES,
    LabelSchema,
    Region,
    default_compartment_schema,
    default_muscle_schema,
    region_name,
)

__all__ = ["build_schema", "LabelMapper"]

_SIDED_KINDS = ("muscle", "group", "compartment", "subcutaneous")


def _targets(tables: Iterable[Mapping[int, str]], aliases: AliasTable) -> list[Target]:
    out, problems = [], []
    for table in tables:
        for value, name in table.items():
            try:
                out.append(aliases.resolve(name))
            except LabelTableError as e:
                if value != 0:
                    problems.append(f"label {value}: {e}")
    if problems:
        raise LabelTableError("; ".join(dict.fromkeys(problems)))
    return out


def build_schema(level: str, tables: Iterable[Mapping[int, str]], aliases: AliasTable,
                 stations: Iterable[str] = ()) -> tuple[LabelSchema, list[str] | None]:
    """The schema of a converted cohort and its ``annotated`` list (``None``: everything).

    Args:
        level: ``compartment`` | ``muscle``.
        tables: the label tables the exams use (``{value: name}``).
        aliases: how names resolve.
        stations: the cohort's stations; ``annotated`` is ``None`` when the tables
            delineate every structure of these.
    """
    targets = _targets(tables, aliases)
    if level == "compartment":
        schema = default_compartment_schema()
    else:
        if any(t.kind == "compartment" for t in targets):
            raise LabelTableError("the label tables name whole compartments: convert at level=compartment")
        schema = _with_groups(default_muscle_schema(), sorted({t.name for t in targets if t.kind == "group"}))
    names: set[str] = set()
    for t in targets:
        if t.kind == "background":
            continue
        for side in ([t.side] if t.side else SIDES):
            names.add(output_name(schema, t, side))
    if stations:
        wanted = set().union(*(schema.station_labels(s) for s in stations)) - {0}
        if {schema.labels[n] for n in names} >= wanted:
            return schema, None
    return schema, sorted(names, key=lambda n: schema.labels[n])


def _with_groups(schema: LabelSchema, groups: list[str]) -> LabelSchema:
    """The muscle schema plus ``{group}_{side}`` labels, members of their compartment's region."""
    labels = dict(schema.labels)
    regions = dict(schema.regions)
    value = schema.max_label + 1
    for g in groups:
        station, comp, _ = GROUPS[g]
        for side in SIDES:
            labels[f"{g}_{side}"] = value
            r = regions[region_name(station, comp, side)]
            regions[r.name] = Region(r.name, r.station, r.compartment, r.side, (*r.labels, value))
            value += 1
    return LabelSchema(labels=labels, regions=regions, level="muscle")


def output_name(schema: LabelSchema, t: Target, side: str | None) -> str:
    """The schema label name a source target takes on ``side``."""
    if t.kind == "bone":
        return "bone"
    if t.kind == "subcutaneous":
        return f"subcutaneous_{side}"
    if schema.level == "compartment":
        return region_name(t.station, t.compartment, side)
    return f"{t.name}_{side}"


class LabelMapper:
    """Map one exam's source label map onto the schema (sides from names, the exam, or ``auto``)."""

    def __init__(self, schema: LabelSchema, aliases: AliasTable, min_gap_mm: float = 2.0):
        self.schema = schema
        self.aliases = aliases
        self.min_gap_mm = min_gap_mm

    def map(self, data: np.ndarray, affine: np.ndarray, table: Mapping[int, str], station: str,
            side: str, where: str) -> np.ndarray:
        """``data`` (source values) -> uint8 schema values on the same grid.

        Args:
            side: ``auto`` (split sideless labels at the gap between the legs),
                ``right`` or ``left`` (every sideless label is that side's).
        """
        values = [int(v) for v in np.unique(data)]
        missing = [v for v in values if v != 0 and v not in table]
        if missing:
            raise LabelTableError(f"{where}: values {missing} are not in the label table; add them to it")
        targets = {v: (self.aliases.resolve(table[v]) if v in table else Target("background", "background"))
                   for v in values}
        for v, t in targets.items():
            if t.station is not None and t.station != station:
                raise LabelTableError(f"{where}: label {v} ({table[v]!r}) is a {t.station} structure in a {station} exam")
        sideless = [v for v, t in targets.items() if t.kind in _SIDED_KINDS and t.side is None]
        sides = None
        if sideless and side == "auto":
            muscle = np.isin(data, [v for v, t in targets.items() if t.kind in ("muscle", "group", "compartment")])
            sides = split_sides(np.isin(data, sideless), affine, where, guide=muscle, min_gap_mm=self.min_gap_mm)
        out = np.zeros(data.shape, np.uint8)
        for v, t in targets.items():
            if t.kind == "background":
                continue
            sel = data == v
            if t.kind == "bone":
                out[sel] = self.schema.labels["bone"]
            elif t.side is not None or side != "auto":
                out[sel] = self.schema.labels[output_name(self.schema, t, t.side or side)]
            else:
                for s, code in (("right", 1), ("left", -1)):
                    out[sel & (sides == code)] = self.schema.labels[output_name(self.schema, t, s)]
        return out
