"""nxp2seg: segment and grade lower-limb muscle MRI in myositis (T1 + STIR)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
