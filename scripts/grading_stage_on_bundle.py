#!/usr/bin/env python
"""Learn the grader on the frozen segmenter of an existing bundle.

Usage: python scripts/grading_stage_on_bundle.py BUNDLE [--out NEW_BUNDLE]
           [--cohort DIR] [--threads N] [--features CACHE.pt] [--json OUT.json]
           [grading.key=value ...]

The grading stage ``python -m nxp2seg.train`` runs after its segmentation fit
(:mod:`nxp2seg.models.grading_stage`), on a bundle already trained: the cohort
and the train/val/test split come from the bundle's config (``--cohort`` points
at another copy of the same cohort), the grader is the package's default
``grading`` config with the given overrides (Hydra dot-list, e.g.
``grading.fit.folds=0 grading.features.decoder_features=false
grading.operating.flags=specificity``). It prints the validation and test
agreement, the operating points and the seconds spent; with ``--out`` it writes
a new bundle holding the network and the grader (as training writes it).
Minutes on 2 CPU cores for the default phantom, instead of retraining the
segmenter.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def grading_config(overrides: list[str]) -> Any:
    """The package's ``train.yaml`` composed with ``overrides`` (its ``grading`` block is used)."""
    from hydra import compose, initialize_config_dir

    import nxp2seg

    configs = Path(nxp2seg.__file__).resolve().parent / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def stage_on_bundle(bundle_path: Path, overrides: list[str], cohort: Path | None = None,
                    reference: Any = None, features: Path | None = None) -> tuple[Any, Any, Any, dict]:
    """Learn a grader on ``bundle_path``'s frozen network.

    Args:
        bundle_path: a bundle written by ``nxp2seg.train``.
        overrides: Hydra overrides of ``train.yaml`` (``grading.*`` are the ones that matter).
        cohort: the cohort (default: the bundle's).
        reference: a normal-muscle reference estimator to use instead of the configured one
            (the seam of :mod:`nxp2seg.models.tissue`; e.g. an oracle in a diagnostic).
        features: a cache file: when it exists, the features, thresholds and cohort
            statistics of an earlier run are reused (same bundle and feature config: the
            caller's responsibility); otherwise the run's are written there.

    Returns:
        ``(result, bundle, graded, grader_spec)``: the
        :class:`~nxp2seg.models.grading_stage.StageResult`, the loaded bundle, the
        :class:`~nxp2seg.models.myositis.GradingNet` (network + learned grader) and the
        bundle's ``grader`` entry.
    """
    import torch
    from omegaconf import OmegaConf

    from nxp2seg.data.datamodule import CohortDataModule
    from nxp2seg.inference.predictor import Predictor
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.models.grading_spec import instantiate_spec
    from nxp2seg.models.grading_stage import run_grading_stage
    from nxp2seg.models.myositis import GradingNet
    from nxp2seg.train import build_grader

    cfg = grading_config(overrides)
    spec = instantiate_spec(cfg.grading)
    bundle = load_bundle(bundle_path)
    if bundle.has_grading:
        print(f"{bundle_path}: already has a grader; learning a new one")
    cohort = cohort or Path(bundle.validation.get("data", {}).get("cohort", ""))
    dm = CohortDataModule(
        cohort=cohort,
        split=OmegaConf.to_container(bundle.config.data.split, resolve=True),
        preprocessing=bundle.preprocessing,
        loader={"verify": False},
    )
    dm.setup("fit")
    net = bundle.build_network()
    with torch.random.fork_rng():
        torch.manual_seed(int(spec.fit.seed))
        grader, grader_spec = build_grader(cfg, dm, net)
    if reference is not None:
        grader.features.reference = reference
    prep = bundle.preprocessing
    graded = GradingNet(net, grader, canvas_size=list(prep.canvas_size or prep.patch_size),
                        schema=dm.schema, grade_scale=dm.grade_scale.name)
    segmenter = Predictor(bundle).segmenter  # the sliding-window inference predict segments with
    cached = torch.load(features, weights_only=False) if features is not None and features.is_file() else None
    result = run_grading_stage(graded, dm, spec, segment=segmenter.infer, cached=cached)
    if features is not None and cached is None:
        torch.save(result, features)
    return result, bundle, graded, grader_spec


def main() -> None:
    import torch
    from omegaconf import OmegaConf

    from nxp2seg.models.bundle import write_bundle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. grading.fit.epochs=30")
    ap.add_argument("--out", type=Path, help="write a bundle with the grader here")
    ap.add_argument("--cohort", type=Path, help="the cohort (default: the bundle's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, help="also write the metrics and the stage summary here")
    ap.add_argument("--features", type=Path, help="feature cache: reuse it when it exists, else write it")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result, bundle, graded, grader_spec = stage_on_bundle(args.bundle, args.overrides, args.cohort,
                                                             features=args.features)
    report = {"metrics": result.metrics, "stage": result.summary, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.out:
        validation = dict(bundle.validation)
        for split, values in result.metrics.items():
            validation[split] = {**validation.get(split, {}), **values}
        validation["grading_stage"] = result.summary
        config = OmegaConf.create(OmegaConf.to_container(bundle.config, resolve=True))
        config.grading = OmegaConf.create(result.summary["spec"])
        write_bundle(args.out, graded, config=config, dataset=bundle.dataset, preprocessing=bundle.preprocessing,
                     validation=validation, network=bundle.manifest["network"], grader=grader_spec)
        print(f"bundle with the grader written to {args.out.resolve()}")


if __name__ == "__main__":
    main()
