"""The built-in phantom cohort as a cohort source: a cache folder, generated once.

``data=phantom`` gives the data module a :class:`PhantomCohort` (config block
``data.phantom``, instantiated by Hydra): the data module reads the cohort
from :attr:`PhantomCohort.cohort_dir` and asks :meth:`PhantomCohort.prepare`
to generate it there when it is missing (on rank 0 only, as Lightning's
``prepare_data``). The data layer never imports the generator: the config
wires it in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nxp2seg.config_utils import to_plain
from nxp2seg.phantom.generate import generate_cohort

__all__ = ["PhantomCohort", "phantom_cohort_dir"]


def phantom_cohort_dir(
    cache_dir: str | os.PathLike, preset: str, subjects: int, seed: int, overrides: Mapping[str, Any] | None = None
) -> Path:
    """Folder of the cached phantom cohort, e.g. ``~/.cache/nxp2seg/phantom-small-n48-seed0``;
    with generator overrides (e.g. ``sequence: dixon``) a digest of them is appended, so a
    cached cohort is reused only for the same overrides."""
    name = f"phantom-{preset}-n{int(subjects)}-seed{int(seed)}"
    if overrides:
        plain = json.dumps(to_plain(overrides), sort_keys=True, default=str)
        name += f"-{hashlib.sha256(plain.encode()).hexdigest()[:10]}"
    return Path(os.path.expanduser(str(cache_dir))) / name


@dataclass
class PhantomCohort:
    """A phantom cohort generated once into ``cache_dir`` (``phantom-{preset}-n{subjects}-seed{seed}``).

    Attributes:
        preset: ``tiny``, ``small`` or ``full``.
        subjects: number of subjects (a thigh and a calf case each).
        seed: the generator's seed.
        cache_dir: the cache folder the cohort folder lives in.
        overrides: nested :class:`~nxp2seg.phantom.config.PhantomConfig` overrides
            passed to :func:`~nxp2seg.phantom.generate.generate_cohort`; a digest of
            them ends the folder name (none: the name of before).
    """

    preset: str = "small"
    subjects: int = 48
    seed: int = 0
    cache_dir: str = "~/.cache/nxp2seg"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cohort_dir(self) -> Path:
        return phantom_cohort_dir(self.cache_dir, self.preset, self.subjects, self.seed, self.overrides)

    def describe(self) -> dict[str, Any]:
        """Plain values for logs and the bundle."""
        return {
            "preset": self.preset,
            "subjects": int(self.subjects),
            "seed": int(self.seed),
            "cache_dir": str(self.cache_dir),
            "overrides": dict(self.overrides or {}),
        }

    def prepare(self) -> Path:
        """Generate the cohort into :attr:`cohort_dir` unless it is there; return the folder.

        Generation writes a temporary sibling folder and renames it, so a cohort
        folder is complete or absent; a concurrent process finishing first wins.
        """
        out = self.cohort_dir
        if (out / "dataset.json").exists():
            return out
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"nxp2seg: generating the phantom cohort ({self.preset}, {self.subjects} subjects) in {out}"
        )
        try:
            generate_cohort(
                tmp,
                subjects=int(self.subjects),
                preset=str(self.preset),
                seed=int(self.seed),
                progress=True,
                **dict(self.overrides or {}),
            )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, out)  # atomic: a cohort folder is complete or absent
        except OSError:
            if not (out / "dataset.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        return out
