"""Config helpers: plain values from Hydra/OmegaConf nodes, dataclass records, the commands' configs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["CONFIG_DIR", "dataclass_from_mapping", "load_cli_config", "packaged_defaults", "parse_key_values",
           "to_plain"]

#: The packaged Hydra configs (``python -m nxp2seg.train``'s config path).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def to_plain(x: Any) -> Any:
    """DictConfig/ListConfig, mappings, sequences and numpy scalars -> dict/list/float/int.

    Hydra passes config nodes to instantiated objects unless told otherwise;
    checkpoints and JSON want plain values (tensors are left as they are).
    """
    if OmegaConf.is_config(x):
        return OmegaConf.to_container(x, resolve=True)
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


def load_cli_config(
    path: str | os.PathLike, overrides: Sequence[str], *, open_keys: Sequence[str] = ()
) -> DictConfig:
    """A command's config file (``predict``, ``evaluate``, ``analyze``) with ``key=value`` overrides.

    Unknown keys are refused with the list of known ones; ``open_keys`` name
    blocks that take new keys (``analyze``'s ``types.COLUMN=KIND``).

    Raises:
        ValueError: an argument that is not ``key=value``, or an unknown key.
    """
    cfg = OmegaConf.load(path)
    OmegaConf.set_struct(cfg, True)
    for key in open_keys:  # dotted keys reach nested blocks (analyze's compare.combine)
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"arguments must be key=value, got {bad}; see --help")
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # noqa: BLE001 - omegaconf's errors are clear but long
        known = ", ".join(cfg.keys())
        raise ValueError(f"{str(e).splitlines()[0]}; known options: {known}") from None


@lru_cache(maxsize=None)
def _packaged(path: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / path), resolve=False)


def packaged_defaults(path: str, key: str) -> dict[str, Any]:
    """The block ``key`` of the packaged config file ``configs/<path>`` as plain values.

    The config files are the one place a default is written: the records that
    read a config block (:class:`~nxp2seg.data.pipelines.Augmentation`,
    :class:`~nxp2seg.data.preprocessing.PlanOptions`, the data module's split
    and loader settings, ...) take their defaults from here, so code and YAML
    cannot drift.

    Raises:
        KeyError: the file has no block ``key``.
    """
    block = _packaged(path).get(key)
    if not isinstance(block, dict):
        raise KeyError(f"configs/{path} has no block {key!r}")
    return dict(block)


def parse_key_values(argv: Sequence[str], example: str, strip_plus: bool = False) -> dict:
    """Command-line ``key=value`` arguments (values in YAML syntax) as a nested dict.

    The commands that take plain ``key=value`` pairs without a Hydra app (``nxp2seg.phantom``,
    ``nxp2seg.data.convert``) parse them here. ``strip_plus`` accepts Hydra's ``+key=value``.

    Raises:
        ValueError: an argument without ``=``; the message shows ``example``.
    """
    bad = [a for a in argv if "=" not in a or a.startswith("=")]
    if bad:
        raise ValueError(f"arguments must be key=value, got {bad}; e.g. {example}")
    args = [a.lstrip("+") for a in argv] if strip_plus else list(argv)
    return OmegaConf.to_container(OmegaConf.from_dotlist(args), resolve=True)  # type: ignore[return-value]
