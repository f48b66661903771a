"""Add the out-of-distribution guard's signature to a bundle trained before bundles carried one.

``python -m nxp2seg.models.bundle_signature BUNDLE COHORT``: the signature of the
bundle's own training cases (its config's split of COHORT), written into the
bundle (``signature.json``, hash recorded in ``bundle.json``).
"""

from __future__ import annotations

import sys

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.datamodule import split_by_subject
from nxp2seg.data.signature import cohort_signature
from nxp2seg.models.bundle import add_signature, load_bundle

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m nxp2seg.models.bundle_signature BUNDLE COHORT``: add the guard's signature to a bundle
    trained before bundles carried one, from its training cohort (the bundle's own split)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        return 2
    bundle = load_bundle(argv[0])
    cohort = Cohort.open(argv[1])
    split = dict(bundle.config.data.get("split") or {})
    splits = split_by_subject(cohort.cases, float(split.get("val_fraction", 0.2)), int(split.get("seed", 0)),
                              tuple(split.get("holdout", ("test",))))
    signature = cohort_signature(cohort, splits["train"])
    if signature is None:
        print(f"{argv[1]}: no labelled training case to take a signature from", file=sys.stderr)
        return 1
    add_signature(argv[0], signature)
    print(f"{argv[0]}: signature of {signature['n_cases']} training cases added")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
