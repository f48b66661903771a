"""The model bundle: a self-contained folder that inference needs and trusts.

::

    BUNDLE/
      weights.safetensors   the module's tensors (safetensors; never a pickle)
      config.yaml           the resolved training config
      dataset.json          label schema and grade scale of the training cohort
      preprocessing.json    orientation, target spacing, patch size, normalisation
      validation.json       validation (and held-out test) summary metrics
      bundle.json           format and package version, git commit, how to build
                            the network (and the grading head, when trained),
                            and the sha256 of every file above

:meth:`Bundle.build_network` rebuilds the segmentation network;
:meth:`Bundle.build_model` the network with its grading head
(:class:`~nxp2seg.models.myositis.GradingNet`), which segments and grades in one pass.

:func:`write_bundle` writes into a temporary folder and renames it into place,
so a bundle folder is complete or absent. :func:`load_bundle` checks the format
version, the package version and every hash before it reads anything, and
refuses with a message that says what to do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nxp2seg
from nxp2seg.data.cohort import DatasetDescription
from nxp2seg.data.preprocessing import Preprocessing
from nxp2seg.data.schema import SchemaError
from nxp2seg.io import atomic_write_text

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BUNDLE_FILES",
    "BundleError",
    "Bundle",
    "write_bundle",
    "load_bundle",
    "add_signature",
    "git_commit",
]

BUNDLE_FORMAT = "nxp2seg-bundle"
BUNDLE_FORMAT_VERSION = 1
#: Files every bundle holds besides ``bundle.json``.
BUNDLE_FILES: tuple[str, ...] = (
    "weights.safetensors",
    "config.yaml",
    "dataset.json",
    "preprocessing.json",
    "validation.json",
)
#: Files a bundle may hold (hashed like the others when present): ``signature.json``, the
#: training cohort's image signature (:mod:`nxp2seg.data.signature`; bundles from before it
#: have none and predict cannot score them).
OPTIONAL_FILES: tuple[str, ...] = ("signature.json",)
#: Network builders a bundle may name (a bundle never makes us import anything else).
_ALLOWED_TARGET_PREFIX = "nxp2seg.models."


class BundleError(RuntimeError):
    """A bundle that cannot be used: missing, tampered, or from an incompatible version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out) or (0,)


def git_commit(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git tree holding ``path``."""
    where = Path(path) if path else Path(nxp2seg.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"commit": sha or None, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def _unique_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state as contiguous CPU tensors, each shared tensor stored once (first name)."""
    seen: set[tuple] = set()
    out: dict[str, torch.Tensor] = {}
    for k, v in module.state_dict().items():
        if v.numel():
            key = (
                v.device,
                v.untyped_storage().data_ptr(),
                v.storage_offset(),
                tuple(v.shape),
                tuple(v.stride()),
            )
            if key in seen:
                continue
            seen.add(key)
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def write_bundle(
    out: str | os.PathLike,
    module: nn.Module,
    *,
    config: Any,
    dataset: DatasetDescription,
    preprocessing: Preprocessing,
    validation: Mapping[str, Any],
    network: Mapping[str, Any],
    grader: Mapping[str, Any] | None = None,
    overwrite: bool = True,
    signature: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model bundle to ``out`` and return its path.

    Args:
        out: the bundle folder (replaced as a whole when it exists and ``overwrite``).
        module: the trained module; every tensor of its ``state_dict`` is saved.
        config: the training config (an OmegaConf container or a mapping); written resolved.
        dataset: the training cohort's description (schema, grade scale).
        preprocessing: the planned preprocessing.
        validation: summary metrics, e.g. ``{"val": {...}, "test": {...}}``.
        network: ``{"target": "nxp2seg.models.networks.build_dynunet", "kwargs": {...},
            "state_prefix": "net."}``: how :meth:`Bundle.build_network` rebuilds the network.
        grader: the same for the grading head (``"state_prefix": "grader."``), or
            ``None`` for a segmentation-only model.
        signature: the training cohort's image signature (:func:`nxp2seg.data.signature.cohort_signature`).
    """
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} exists; choose another folder or pass overwrite=True")
    target = str(network.get("target", ""))
    for what, spec in (("network", network), ("grader", grader or {"target": target})):
        t = str(spec.get("target", ""))
        if not t.startswith(_ALLOWED_TARGET_PREFIX):
            raise BundleError(f"{what} target {t!r} must be a builder in {_ALLOWED_TARGET_PREFIX}*")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(
            _unique_tensors(module),
            str(tmp / "weights.safetensors"),
            metadata={"format": "pt", "producer": "nxp2seg"},
        )
        cfg = config if OmegaConf.is_config(config) else OmegaConf.create(dict(config))
        atomic_write_text(tmp / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_text(tmp / "dataset.json", _json(dataset.to_dict()))
        preprocessing.save(tmp / "preprocessing.json")
        atomic_write_text(tmp / "validation.json", _json(dict(validation)))
        if signature is not None:
            atomic_write_text(tmp / "signature.json", _json(dict(signature)))
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "package": "nxp2seg",
            "package_version": nxp2seg.__version__,
            "git": git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__.split("+")[0],
            "network": {
                "target": target,
                "kwargs": dict(network.get("kwargs", {})),
                "state_prefix": str(network.get("state_prefix", "")),
            },
            **(
                {
                    "grader": {
                        "target": str(grader["target"]),
                        "kwargs": dict(grader.get("kwargs", {})),
                        "state_prefix": str(grader.get("state_prefix", "grader.")),
                    }
                }
                if grader is not None
                else {}
            ),
            "files": {
                name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                for name in BUNDLE_FILES + OPTIONAL_FILES
                if (tmp / name).exists()
            },
        }
        atomic_write_text(tmp / "bundle.json", _json(manifest))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class Bundle:
    """A loaded, verified bundle. Build the network with :meth:`build_network`."""

    path: Path
    manifest: dict[str, Any]
    config: Any
    dataset: DatasetDescription
    preprocessing: Preprocessing
    validation: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    signature: dict[str, Any] | None = None

    @property
    def schema(self) -> Any:
        return self.dataset.schema

    @property
    def grade_scale(self) -> Any:
        return self.dataset.grade_scale

    @property
    def has_grading(self) -> bool:
        """Whether the bundle holds a trained grading head."""
        return "grader" in self.manifest

    def _build(self, what: str, device: str | torch.device) -> nn.Module:
        spec = self.manifest[what]
        target = str(spec["target"])
        if not target.startswith(_ALLOWED_TARGET_PREFIX):
            raise BundleError(
                f"{self.path / 'bundle.json'}: {what} target {target!r} is not an nxp2seg builder"
            )
        module_name, _, fn_name = target.rpartition(".")
        try:
            builder = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise BundleError(
                f"{self.path}: this nxp2seg cannot build {what} {target!r} ({e}); upgrade nxp2seg"
            ) from None
        module = builder(**spec["kwargs"])
        prefix = spec.get("state_prefix", "")
        state = {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}
        _load_strict(module, state, self.path)
        return module.to(device).eval()

    def build_network(self, device: str | torch.device = "cpu") -> nn.Module:
        """Rebuild the segmentation network and load its weights (strict), in eval mode."""
        return self._build("network", device)

    def build_grader(self, device: str | torch.device = "cpu") -> nn.Module | None:
        """Rebuild the grading head (weights loaded strictly), or ``None`` if the bundle has none."""
        return self._build("grader", device) if self.has_grading else None

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with its grading head (if any), ready to segment and grade.

        Returns:
            :class:`~nxp2seg.models.myositis.GradingNet` in eval mode; its
            :meth:`~nxp2seg.models.myositis.GradingNet.predict` takes
            preprocessed volumes (``bundle.preprocessing``) and their stations.
        """
        from nxp2seg.models.myositis import GradingNet

        prep = self.preprocessing
        model = GradingNet(
            self.build_network(device),
            self.build_grader(device),
            canvas_size=prep.canvas_size or prep.patch_size,
            schema=self.schema,
            grade_scale=self.grade_scale.name,
        )
        return model.to(device).eval()


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: Path) -> None:
    """``load_state_dict`` that accepts keys missing only because they alias a loaded tensor."""
    missing, unexpected = module.load_state_dict(dict(state), strict=False)
    if missing:
        own = module.state_dict()
        by_storage: dict[int, set[str]] = {}
        for k, v in own.items():
            by_storage.setdefault(v.untyped_storage().data_ptr(), set()).add(k)
        loaded = set(state)
        missing = [
            k for k in missing if not (by_storage[own[k].untyped_storage().data_ptr()] & loaded)
        ]
    if missing or unexpected:
        raise BundleError(
            f"{where / 'weights.safetensors'} does not fit the network of bundle.json "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); the bundle is damaged"
        )


def add_signature(path: str | os.PathLike, signature: Mapping[str, Any]) -> Path:
    """Add (or replace) ``signature.json`` in a verified bundle and record its hash in ``bundle.json``."""
    path = Path(path)
    load_bundle(path)  # refuse a damaged bundle
    atomic_write_text(path / "signature.json", _json(dict(signature)))
    manifest = json.loads((path / "bundle.json").read_text())
    f = path / "signature.json"
    manifest.setdefault("files", {})["signature.json"] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
    atomic_write_text(path / "bundle.json", _json(manifest))
    return f


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Verify and read a bundle folder.

    Raises:
        BundleError: not a bundle; written by an unknown format or a newer nxp2seg;
            a file missing or changed since it was written (sha256); an unreadable
            schema or preprocessing record.
    """
    from omegaconf import OmegaConf
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    mpath = path / "bundle.json"
    if not mpath.is_file():
        raise BundleError(
            f"{path} is not a model bundle (no bundle.json); give the bundle folder that training printed"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(
            f"{mpath}: unreadable ({e}); the bundle is damaged, export it again"
        ) from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mpath}: format {manifest.get('format')!r} is not {BUNDLE_FORMAT!r}")
    fv = manifest.get("format_version")
    if not isinstance(fv, int) or fv > BUNDLE_FORMAT_VERSION or fv < 1:
        raise BundleError(
            f"{path}: bundle format version {fv!r}; this nxp2seg ({nxp2seg.__version__}) reads versions "
            f"1..{BUNDLE_FORMAT_VERSION}; upgrade nxp2seg"
        )
    written_by = str(manifest.get("package_version", "0"))
    if _version_tuple(written_by)[:2] > _version_tuple(nxp2seg.__version__)[:2]:
        raise BundleError(
            f"{path}: written by nxp2seg {written_by}, newer than the installed {nxp2seg.__version__}; "
            f"install nxp2seg>={'.'.join(map(str, _version_tuple(written_by)[:2]))} to use it"
        )
    files = manifest.get("files", {})
    for name in BUNDLE_FILES + tuple(n for n in OPTIONAL_FILES if n in files):
        if name not in files:
            raise BundleError(
                f"{mpath}: lists no {name}; the bundle is incomplete, export it again"
            )
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: missing; the bundle is incomplete, copy the whole folder")
        if _sha256(f) != files[name].get("sha256"):
            raise BundleError(
                f"{f}: sha256 differs from bundle.json; the file was changed or damaged since the bundle was "
                "written. Refusing to use it: copy the bundle again from its source"
            )
    try:
        dataset = DatasetDescription.from_dict(json.loads((path / "dataset.json").read_text()))
    except (SchemaError, json.JSONDecodeError) as e:
        raise BundleError(
            f"{path / 'dataset.json'}: this nxp2seg cannot honour the bundle's label schema ({e})"
        ) from None
    try:
        prep = Preprocessing.from_dict(json.loads((path / "preprocessing.json").read_text()))
    except (ValueError, TypeError) as e:
        raise BundleError(f"{path / 'preprocessing.json'}: {e}") from None
    try:
        state = load_file(str(path / "weights.safetensors"), device="cpu")
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{path / 'weights.safetensors'}: unreadable ({e})") from None
    return Bundle(
        path=path,
        manifest=manifest,
        config=OmegaConf.load(path / "config.yaml"),
        dataset=dataset,
        preprocessing=prep,
        validation=json.loads((path / "validation.json").read_text()),
        state_dict=state,
        signature=json.loads((path / "signature.json").read_text()) if "signature.json" in files else None,
    )
