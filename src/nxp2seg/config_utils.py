"""Turning Hydra/OmegaConf config nodes into plain Python values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

__all__ = ["to_plain", "dataclass_from_mapping"]


def to_plain(x: Any) -> Any:
    """DictConfig/ListConfig, mappings, sequences and numpy scalars -> dict/list/float/int.

    Hydra passes config nodes to instantiated objects unless told otherwise;
    checkpoints and JSON want plain values (tensors are left as they are).
    """
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, Mapping):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    if hasattr(x, "item") and hasattr(x, "dtype") and getattr(x, "ndim", 1) == 0 and type(x).__module__ == "numpy":
        return x.item()
    return x


def dataclass_from_mapping(cls: type, d: Mapping[str, Any] | None, where: str) -> Any:
    """Build the dataclass ``cls`` from a config block, refusing unknown keys.

    ``where`` names the block in the error (e.g. ``data.augmentation``).
    """
    d = dict(to_plain(d) or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)
