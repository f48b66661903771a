"""Synthetic lower-limb myositis MRI cohorts (see docs/phantom.md and PHANTOM.md).

``generate_cohort(out, subjects=8, preset="tiny", seed=0)`` writes a complete
labelled cohort in the dataset contract; ``python -m nxp2seg.phantom`` does the
same from the command line.
"""

from __future__ import annotations

__all__ = ["generate_cohort"]


def generate_cohort(*args, **kwargs):
    """Generate a phantom cohort; see :func:`nxp2seg.phantom.generate.generate_cohort`."""
    from nxp2seg.phantom.generate import generate_cohort as _generate

    return _generate(*args, **kwargs)
