"""Source label tables and label names -> the nxp2seg label schema.

Label tables (what a value of a source mask is called):

* **ITK-SNAP** ``.label`` / ``.txt`` description files: ``IDX R G B A VIS MSH "LABEL"``;
* **3D Slicer** colour tables (``.ctbl``, ``.txt``): ``value name R G B A``;
* **CSV**: ``value,name`` (a header row is optional).

Names are resolved through an alias table: every muscle of the schema by its
full name and the usual abbreviations (``VL``, ``vastus lateralis``, ``BFlh``),
groups for sources that merge muscles (``adductors``, ``hamstrings``,
``quadriceps``, ``gastrocnemius``, ``peronei``, ``biceps femoris``), the
compartments themselves, subcutaneous fat, bone and background. A name may
carry a side (``VL_R``, ``left vastus lateralis``); a name without one is
*sideless* and needs ``side: auto`` (:mod:`nxp2seg.data.convert_sides`) or a
fixed side. Users add or override aliases with a ``name,target`` CSV or a
mapping (an abbreviation means different muscles in different groups: the
Huashan table's ``AM`` is all adductors, not adductor magnus).
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nxp2seg.data.schema import MUSCLES

__all__ = [
    "LabelTableError",
    "Target",
    "read_label_table",
    "AliasTable",
    "default_aliases",
    "GROUPS",
]


class LabelTableError(ValueError):
    """A label table or label name that cannot be read or mapped."""


#: Groups a source may use where it merges muscles: group -> (station, compartment, members).
GROUPS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "adductors": ("thigh", "medial", ("adductor_longus", "adductor_brevis", "adductor_magnus")),
    "quadriceps": ("thigh", "anterior", ("rectus_femoris", "vastus_lateralis", "vastus_medialis", "vastus_intermedius")),
    "vasti": ("thigh", "anterior", ("vastus_lateralis", "vastus_medialis", "vastus_intermedius")),
    "biceps_femoris": ("thigh", "posterior", ("biceps_femoris_long_head", "biceps_femoris_short_head")),
    "hamstrings": ("thigh", "posterior", MUSCLES["thigh"]["posterior"]),
    "gastrocnemius": ("calf", "posterior", ("gastrocnemius_medial_head", "gastrocnemius_lateral_head")),
    "peronei": ("calf", "lateral", MUSCLES["calf"]["lateral"]),
    "deep_flexors": ("calf", "posterior", ("tibialis_posterior", "flexor_hallucis_longus", "flexor_digitorum_longus")),
    "extensors": ("calf", "anterior", ("extensor_hallucis_longus", "extensor_digitorum_longus")),
}

_ABBREVIATIONS: dict[str, tuple[str, ...]] = {
    # thigh
    "sartorius": ("sa", "sar", "sart", "s"),
    "rectus_femoris": ("rf", "rec fem"),
    "vastus_lateralis": ("vl", "vas lat"),
    "vastus_medialis": ("vm", "vas med"),
    "vastus_intermedius": ("vi", "vas int"),
    "gracilis": ("gr", "gra", "grac", "g"),
    "adductor_longus": ("al", "adl", "add long"),
    "adductor_brevis": ("ab", "adb", "add brev"),
    "adductor_magnus": ("am", "adm", "add mag"),
    "biceps_femoris_long_head": ("bflh", "bfl", "bl", "bf lh", "bf long", "biceps long head"),
    "biceps_femoris_short_head": ("bfsh", "bfs", "bs", "bb", "bf sh", "bf short", "biceps short head"),
    "semimembranosus": ("sm", "smb", "semimem"),
    "semitendinosus": ("st", "stn", "semiten"),
    # calf
    "tibialis_anterior": ("ta", "tib ant"),
    "extensor_hallucis_longus": ("ehl",),
    "extensor_digitorum_longus": ("edl",),
    "peroneus_longus": ("pl", "fibularis longus", "perl"),
    "peroneus_brevis": ("pb", "fibularis brevis", "perb"),
    "gastrocnemius_medial_head": ("gm", "mg", "gcm", "gastroc med", "medial gastrocnemius", "gastrocnemius medialis"),
    "gastrocnemius_lateral_head": ("gl", "lg", "gcl", "gastroc lat", "lateral gastrocnemius", "gastrocnemius lateralis"),
    "soleus": ("sol", "so"),
    "tibialis_posterior": ("tp", "tib post"),
    "flexor_hallucis_longus": ("fhl",),
    "flexor_digitorum_longus": ("fdl",),
    # groups
    "adductors": ("add", "adductor", "adductor group", "adductor muscles"),
    "quadriceps": ("quad", "quads", "quadriceps femoris"),
    "biceps_femoris": ("bf", "biceps"),
    "hamstrings": ("hs", "hams"),
    "gastrocnemius": ("gas", "gastroc", "gc"),
    "peronei": ("per", "peroneals", "peroneus", "fibularis", "fibulares"),
    # structures
    "subcutaneous": ("sat", "scat", "subcutaneous fat", "subcutaneous tissue", "subcut", "fat"),
    "bone": ("femur", "tibia", "fibula", "cortex", "marrow", "bones"),
    "background": ("clear label", "clear", "bg", "unlabeled", "unlabelled", "none", "exterior", "background"),
}

_SIDE_WORDS = {"r": "right", "rt": "right", "right": "right", "l": "left", "lt": "left", "left": "left"}
_STATION_WORDS = {"thigh", "calf", "leg"}


@dataclass(frozen=True)
class Target:
    """What a source label means in the schema.

    Attributes:
        kind: ``muscle`` | ``group`` | ``compartment`` | ``subcutaneous`` | ``bone`` | ``background``.
        name: the muscle, group or compartment (``thigh_anterior``), or the kind again.
        side: ``right`` | ``left`` | ``None`` (sideless: decided per voxel by ``side``).
    """

    kind: str
    name: str
    side: str | None = None

    @property
    def station(self) -> str | None:
        """The station the structure belongs to (``None`` for subcutaneous, bone, background)."""
        if self.kind == "muscle":
            return next(st for st, comps in MUSCLES.items() for ms in comps.values() if self.name in ms)
        if self.kind == "group":
            return GROUPS[self.name][0]
        if self.kind == "compartment":
            return self.name.split("_")[0]
        return None

    @property
    def compartment(self) -> str | None:
        if self.kind == "muscle":
            return next(c for comps in MUSCLES.values() for c, ms in comps.items() if self.name in ms)
        if self.kind == "group":
            return GROUPS[self.name][1]
        if self.kind == "compartment":
            return self.name.split("_", 1)[1]
        return None


def _norm(name: str) -> str:
    """Lower case, separators to single spaces: ``"Vastus_Lateralis "`` -> ``"vastus lateralis"``."""
    s = re.sub(r"[_\-./,;:()\[\]]+", " ", str(name).strip().lower())
    return re.sub(r"\s+", " ", s).strip()


def _canonical_targets() -> dict[str, Target]:
    out: dict[str, Target] = {}
    for station, comps in MUSCLES.items():
        for comp, muscles in comps.items():
            out[_norm(f"{station}_{comp}")] = Target("compartment", f"{station}_{comp}")
            for m in muscles:
                out[_norm(m)] = Target("muscle", m)
    for g in GROUPS:
        out[_norm(g)] = Target("group", g)
    for kind in ("subcutaneous", "bone", "background"):
        out[kind] = Target(kind, kind)
    return out


def default_aliases() -> dict[str, Target]:
    """The built-in alias table: normalised name -> :class:`Target` (sideless)."""
    table = _canonical_targets()
    canon = dict(table)
    for target_name, abbreviations in _ABBREVIATIONS.items():
        target = canon[_norm(target_name)]
        for a in abbreviations:
            table[_norm(a)] = target
    return table


class AliasTable:
    """Resolve source label names to :class:`Target` s.

    Args:
        extra: user aliases ``{source name: target name}`` (target: a muscle,
            group, compartment such as ``thigh_medial``, ``subcutaneous``,
            ``bone`` or ``background``, optionally with a side), overriding
            the built-in ones.
    """

    def __init__(self, extra: Mapping[str, str] | None = None):
        self.table = default_aliases()
        canon = _canonical_targets()
        for source, target in (extra or {}).items():
            stem, side = _split_side(_norm(target))
            if stem not in canon:
                raise LabelTableError(
                    f"alias {source!r} -> {target!r}: {target!r} is not a muscle, group, compartment, "
                    f"subcutaneous, bone or background (e.g. adductors, vastus_lateralis, thigh_medial)"
                )
            t = canon[stem]
            self.table[_norm(source)] = Target(t.kind, t.name, side)

    @classmethod
    def from_file(cls, path: str | Path) -> AliasTable:
        """A ``name,target`` CSV (header optional) of user aliases."""
        rows = _csv_rows(Path(path))
        extra = {}
        for i, row in enumerate(rows, 1):
            if len(row) < 2:
                raise LabelTableError(f"{path}, row {i}: need 'source name,target name', got {row}")
            if i == 1 and _norm(row[0]) in ("name", "source", "alias") and _norm(row[1]) in ("target", "schema", "maps to"):
                continue
            extra[row[0]] = row[1]
        return cls(extra)

    def resolve(self, name: str) -> Target:
        """The :class:`Target` of one source label name, with its side if the name carries one."""
        key = _norm(name)
        if key in self.table:
            return self.table[key]
        stem, side = _split_side(key)
        if stem in self.table:
            t = self.table[stem]
            return Target(t.kind, t.name, side or t.side)
        raise LabelTableError(
            f"label {name!r} matches no muscle, group or structure; add an alias "
            f"(aliases: {{'{name}': 'vastus_lateralis'}} in the spec, or a name,target CSV)"
        )


def _split_side(key: str) -> tuple[str, str | None]:
    """``"vl r"`` -> ``("vl", "right")``; ``"left vastus lateralis"`` -> (..., "left"); station words dropped."""
    words = [w for w in key.split(" ") if w not in _STATION_WORDS]
    sides = [_SIDE_WORDS[w] for w in (words[:1] + words[-1:]) if w in _SIDE_WORDS]
    if len(words) > 1 and sides:
        if words[0] in _SIDE_WORDS:
            words = words[1:]
        elif words[-1] in _SIDE_WORDS:
            words = words[:-1]
        return " ".join(words), sides[0]
    return " ".join(words), None


# ---------------------------------------------------------------------------
# label tables
# ---------------------------------------------------------------------------


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise LabelTableError(f"{path}: cannot be read ({e.strerror or e})") from None
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)]


def read_label_table(path: str | Path) -> dict[int, str]:
    """``{value: name}`` from an ITK-SNAP label description, a Slicer colour table or a CSV.

    The format is recognised from the content: quoted names after seven numbers
    (ITK-SNAP), ``value name R G B A`` rows (Slicer), or comma-separated
    ``value,name`` rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise LabelTableError(f"{path}: cannot be read ({e.strerror or e}); give the label table's path") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise LabelTableError(f"{path}: no label rows (expected ITK-SNAP, Slicer or value,name CSV)")
    if "," in lines[0] or path.suffix.lower() == ".csv":
        table = _read_csv_table(path)
    elif '"' in lines[0]:
        table = _read_itksnap(path, lines)
    else:
        table = _read_slicer(path, lines)
    if not table:
        raise LabelTableError(f"{path}: no label rows found")
    return table


def _read_itksnap(path: Path, lines: list[str]) -> dict[int, str]:
    table = {}
    for ln in lines:
        parts = shlex.split(ln)
        if len(parts) < 8:
            raise LabelTableError(f"{path}: ITK-SNAP row {ln!r} needs IDX R G B A VIS MSH \"LABEL\"")
        table[_int(parts[0], path, ln)] = parts[7]
    return table


def _read_slicer(path: Path, lines: list[str]) -> dict[int, str]:
    table = {}
    for ln in lines:
        parts = ln.split()
        if len(parts) < 2:
            raise LabelTableError(f"{path}: Slicer colour-table row {ln!r} needs 'value name R G B A'")
        table[_int(parts[0], path, ln)] = parts[1]
    return table


def _read_csv_table(path: Path) -> dict[int, str]:
    rows = _csv_rows(path)
    if rows and not rows[0][0].lstrip("-").isdigit():
        rows = rows[1:]  # header
    table = {}
    for row in rows:
        if len(row) < 2:
            raise LabelTableError(f"{path}: CSV row {row} needs value,name")
        table[_int(row[0], path, ",".join(row))] = row[1]
    return table


def _int(text: str, path: Path, line: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LabelTableError(f"{path}: row {line!r} does not start with an integer label value") from None
