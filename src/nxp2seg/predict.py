"""``python -m nxp2seg.predict model=BUNDLE input=PATH output=DIR [key=value ...]``: batch inference.

Inputs: a cohort, a folder of T1/STIR NIfTI pairs, a manifest CSV or a folder
of DICOM series (:mod:`nxp2seg.inference.inputs`). Outputs per DESIGN.md
(:mod:`nxp2seg.inference.writers`). Options and defaults: ``configs/predict.yaml``
(``--help`` prints them).

Exit codes: 0 every case ok (or finished before); 1 some case failed (the
others are done; see ``cases.csv``); 2 nothing could run (bad options, an
unusable bundle, input or output folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nxp2seg.config_utils import load_cli_config

import nxp2seg

__all__ = ["load_config", "main", "model_description", "predict"]

# Package imports of the heavy layers (torch, MONAI, Lightning) are inside the functions that use
# them: `python -X importtime` / wall time on this 2-core machine (shared, load ~12):
# import nxp2seg.predict 0.35 s; with inference, models and the bundle loader at module top 21 s, paid by every `--help` and
# every refused argument.
log = logging.getLogger("nxp2seg.predict")
CONFIG = Path(__file__).parent / "configs" / "predict.yaml"


def load_config(overrides: list[str]) -> DictConfig:
    """``configs/predict.yaml`` with ``key=value`` overrides (unknown keys are refused)."""
    return load_cli_config(CONFIG, overrides)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available here; use device=cpu")
    return name


def _bundle_hash(manifest: dict[str, Any]) -> str:
    """12 hex digits identifying a bundle: SHA-256 of its files' own SHA-256 (bundle.json ``files``)."""
    files = manifest.get("files", {})
    text = json.dumps({k: v.get("sha256") for k, v in sorted(files.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_description(bundle: Any, path: str | Path) -> dict[str, Any]:
    """What each ``report.json`` records about the model: the bundle's folder, the nxp2seg
    version and git commit that trained it (``bundle.json``: ``package_version``,
    ``git.commit``, ``git.dirty``), whether it grades, and its grade scale."""
    manifest = bundle.manifest
    git = manifest.get("git") or {}
    return {"bundle": str(Path(path).resolve()), "version": manifest.get("package_version"),
            "commit": git.get("commit"), "commit_dirty": git.get("dirty"),
            "grading": bundle.has_grading, "grade_scale": bundle.grade_scale.name}


def predict(cfg: DictConfig) -> Any:
    """Run a prediction batch from a config; returns the :class:`~nxp2seg.inference.batch.BatchSummary`."""
    import torch

    from nxp2seg.inference.batch import check_output, run_batch
    from nxp2seg.inference.inputs import discover_cases
    from nxp2seg.inference.predictor import Predictor, apply_thresholds
    from nxp2seg.models.bundle import load_bundle

    if not cfg.model:
        raise ValueError("model=BUNDLE is required (the bundle folder written by nxp2seg.train)")
    if not cfg.output:
        raise ValueError("output=DIR is required")
    from nxp2seg.runtime import keep_freed_memory

    keep_freed_memory()  # no page faults on every window's activations (nxp2seg.runtime)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    device = _device(str(cfg.device))  # before anything is created
    bundle = load_bundle(cfg.model)
    cases = discover_cases(cfg.input, manifest=cfg.manifest, split=cfg.split,
                           channels=tuple(c.lower() for c in bundle.preprocessing.channels))
    roots = [Path(cfg.input)] if cfg.input and Path(cfg.input).is_dir() else []
    roots += sorted({p.parent if p.is_file() else p for c in cases for p in (c.t1, c.stir) if p is not None})
    out = check_output(Path(cfg.output), roots)
    model_info = model_description(bundle, cfg.model)
    model_info["bundle_hash"] = _bundle_hash(bundle.manifest)
    model_info["algorithm_version"] = f"{nxp2seg.__version__} bundle {model_info['bundle_hash']}"
    thresholds = {k: v for k, v in dict(cfg.get("thresholds") or {}).items() if v is not None}

    def factory() -> Predictor:
        return Predictor(bundle, device=device, flip_tta=cfg.flip_tta, sw_batch_size=cfg.sw_batch_size,
                         overlap=cfg.overlap, amp=bool(cfg.amp), crop_to_body=cfg.get("crop_to_body"),
                         thresholds=thresholds)

    if bundle.has_grading:  # the operating points the calls are made at, in every report.json
        grader = bundle.build_grader()
        apply_thresholds(grader, thresholds)
        model_info["operating_points"] = grader.operating_points()

    predict_fn = None
    if int(cfg.devices) > 1 or str(cfg.strategy) not in ("auto", "None", "none"):
        from nxp2seg.inference.distributed import lightning_predict_fn

        predict_fn = lightning_predict_fn(out, devices=int(cfg.devices), strategy=str(cfg.strategy),
                                          accelerator=str(cfg.accelerator), qc=bool(cfg.qc),
                                          dicom_seg=bool(cfg.dicom_seg), model_info=model_info)
    return run_batch(factory, cases, out, overwrite=bool(cfg.overwrite), qc=bool(cfg.qc),
                     dicom_seg=bool(cfg.dicom_seg), model_info=model_info,
                     progress=bool(cfg.progress), predict_fn=predict_fn)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(CONFIG.read_text())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("highdicom", "monai", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from nxp2seg.inference.batch import OutputError
    from nxp2seg.inference.inputs import InputError
    from nxp2seg.models.bundle import BundleError

    try:
        cfg = load_config(argv)
        summary = predict(cfg)
    except (ValueError, InputError, OutputError, BundleError, FileNotFoundError) as e:
        print(f"nxp2seg.predict: {e}", file=sys.stderr)
        return 2
    from nxp2seg.inference.batch import is_main_process

    if is_main_process():
        for cid, err in summary.failures:
            print(f"FAILED {cid}: {err}", file=sys.stderr)
        print(summary.line())
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
