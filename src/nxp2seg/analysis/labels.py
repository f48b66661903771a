"""Display labels of columns, regions, muscles and group levels (axis labels, table rows).

Every figure axis and table row of ``analyze`` shows ``labels(name)`` rather
than the raw column name. The built-in table covers the MRI outputs, the
compartments and muscles (with paper 004's abbreviations), and the phantom's
clinical columns; a user's table (``label_table=CSV`` with columns ``name,
label``, and ``labels.NAME=TEXT`` overrides) comes first. A group level is
looked up as ``COLUMN=VALUE`` (e.g. ``diffuse_lesion=1`` -> "With diffuse
lesion"), then as the value itself. Unknown names are shown with underscores
as spaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from nxp2seg.stats.join import AnalysisError

__all__ = ["DEFAULT_LABELS", "Labels"]

DEFAULT_LABELS: dict[str, str] = {
    # MRI outputs
    "total_score": "MRI total score", "thigh_score": "Thigh MRI score",
    "calf_score": "Calf MRI score", "station_score": "Station score",
    "edema_grade": "Edema grade", "fat_grade": "Fat grade", "edema": "Muscle edema",
    "fat": "Fatty infiltration", "fascial_edema": "Fascial edema",
    "subcutaneous_edema": "Subcutaneous edema", "pattern": "Edema pattern",
    "diffuse_lesion": "Diffuse lesion", "diffuse_lesion=1": "With diffuse lesion",
    "diffuse_lesion=0": "Without diffuse lesion", "calf_edema": "Calf edema",
    "calf_edema=1": "With calf edema", "calf_edema=0": "Without calf edema",
    "thigh_edema": "Thigh edema", "thigh_pattern": "Thigh pattern", "calf_pattern": "Calf pattern",
    "thigh": "Thigh", "calf": "Calf", "right": "Right", "left": "Left", "any": "Any",
    "anterior": "Anterior", "medial": "Medial", "lateral": "Lateral", "posterior": "Posterior",
    "none": "None", "patchy": "Patchy", "mixed": "Mixed", "diffuse": "Diffuse",
    # muscles (paper 004's abbreviations)
    "sartorius": "Sartorius (Sa)", "rectus_femoris": "Rectus femoris (RF)",
    "vastus_lateralis": "Vastus lateralis (VL)", "vastus_medialis": "Vastus medialis (VM)",
    "vastus_intermedius": "Vastus intermedius (VI)", "gracilis": "Gracilis (Gr)",
    "adductor_longus": "Adductor longus (AL)", "adductor_brevis": "Adductor brevis (AB)",
    "adductor_magnus": "Adductor magnus (AM)", "adductors": "Adductors (Add)",
    "biceps_femoris_long_head": "Biceps femoris, long head (BF-LH)",
    "biceps_femoris_short_head": "Biceps femoris, short head (BF-SH)",
    "semimembranosus": "Semimembranosus (SM)", "semitendinosus": "Semitendinosus (ST)",
    "tibialis_anterior": "Tibialis anterior (TA)",
    "extensor_hallucis_longus": "Extensor hallucis longus (EHL)",
    "extensor_digitorum_longus": "Extensor digitorum longus (EDL)",
    "peroneus_longus": "Peroneus longus (PL)", "peroneus_brevis": "Peroneus brevis (PB)",
    "gastrocnemius_medial_head": "Gastrocnemius, medial head (GM)",
    "gastrocnemius_lateral_head": "Gastrocnemius, lateral head (GL)", "soleus": "Soleus (So)",
    "tibialis_posterior": "Tibialis posterior (TP)",
    "flexor_hallucis_longus": "Flexor hallucis longus (FHL)",
    "flexor_digitorum_longus": "Flexor digitorum longus (FDL)",
    # the phantom's clinical columns (seed paper 000's names and units)
    "age": "Age (y)", "sex": "Sex", "sex=F": "Female", "sex=M": "Male", "bmi": "BMI (kg/m²)",
    "vas": "VAS of disease", "mmt8": "MMT8", "ck": "CK (U/L)", "ldh": "LDH (U/L)",
    "ast": "AST (U/L)", "ferritin": "Ferritin (ng/ml)", "d_dimer": "D-dimer (mg/l)",
    "nse": "NSE (ng/ml)", "platelets": "PLT (×10⁹/l)", "albumin": "Alb (g/l)",
    "nk_cells": "NK (/µl)", "dysphagia": "Dysphagia", "ild": "ILD", "relapse": "Relapse",
    "death": "Death", "diagnosis": "Diagnosis",
}


class Labels:
    """``labels(name)`` -> display text; user entries first, then :data:`DEFAULT_LABELS`."""

    def __init__(self, overrides: Mapping[str, str] | None = None, table: str | None = None):
        self.table: dict[str, str] = dict(DEFAULT_LABELS)
        if table:
            self.table.update(self._read(table))
        self.table.update({str(k): str(v) for k, v in (overrides or {}).items()})

    @staticmethod
    def _read(path: str) -> dict[str, str]:
        p = Path(path)
        if not p.is_file():
            raise AnalysisError(f"label_table={p}: no such file")
        try:
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise AnalysisError(f"label_table={p}: not a readable CSV table ({e})") from None
        if not {"name", "label"} <= set(df.columns):
            raise AnalysisError(f"label_table={p}: needs columns name,label (it has {list(df.columns)})")
        return dict(zip(df["name"].str.strip(), df["label"].str.strip()))

    def __call__(self, name) -> str:
        key = str(name)
        if key in self.table:
            return self.table[key]
        if key.endswith(".0") and key[:-2] in self.table:
            return self.table[key[:-2]]
        return key.replace("_", " ")

    def level(self, column: str, value) -> str:
        """Label of one level of a grouping column: ``COLUMN=VALUE``, else the value."""
        v = str(value).removesuffix(".0")
        for key in (f"{column}={v}", v):
            if key in self.table:
                return self.table[key]
        return v
