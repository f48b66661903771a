#!/usr/bin/env python
"""Train the grading head on frozen features of an existing segmentation bundle.

Usage: python scripts/grading_stage_on_bundle.py BUNDLE [--out NEW_BUNDLE]
           [--cohort DIR] [--threads N] [key=value ...]

The same stage as ``python -m nxp2seg.train grading=staged`` runs after its
segmentation fit (:mod:`nxp2seg.models.grading_stage`), on a bundle already
trained: the cohort and the train/val/test split come from the bundle's config
(``--cohort`` points at another copy of the same cohort), the head and its
losses are the ``grading=staged`` config's (``grader.key=value`` changes
one), and
``key=value`` set :class:`~nxp2seg.models.grading_stage.StageOptions`
(``epochs=500 mirror=true monitor=val_loss seed=1``). It prints the validation
and test agreement, the readers' own kappa and the seconds spent; with
``--out`` it writes a new bundle holding the network and the head (as the
staged training writes it). Minutes on 2 CPU cores for the default phantom,
instead of retraining the segmenter.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _staged_grading_config() -> dict:
    """``model.grading`` of ``grading=staged`` (the package's configs), without ``_target_``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import nxp2seg

    configs = Path(nxp2seg.__file__).resolve().parent / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["grading=staged"])
    grading = OmegaConf.to_container(cfg.model.grading, resolve=True)
    return {k: v for k, v in grading.items() if not k.startswith("_")}


def parse_options(pairs: list[str]) -> tuple[dict, dict]:
    """``key=value`` pairs -> (StageOptions mapping, grader overrides for ``grader.key=value``)."""
    opts: dict = {"enabled": True}
    grader_overrides: dict = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        parsed = json.loads(value) if value not in ("", "None") else None
        if key.startswith("grader."):  # RegionFeatures/GradingHead options, e.g. grader.reference="tissue"
            grader_overrides[key[len("grader.") :]] = parsed
        else:
            opts[key] = parsed
    return opts, grader_overrides


def stage_on_bundle(bundle_path: Path, pairs: list[str], cohort: Path | None = None):
    """Train a grading head on ``bundle_path``'s frozen network; returns ``(result, bundle, net, grader, kwargs)``."""
    import torch
    from omegaconf import OmegaConf

    from nxp2seg.data.datamodule import CohortDataModule
    from nxp2seg.inference.predictor import Predictor
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.models.grading import FeatureTap, build_grader
    from nxp2seg.models.grading_stage import StageOptions, run_grading_stage
    from nxp2seg.models.losses import DEFAULT_LOSS_WEIGHTS
    from nxp2seg.models.myositis import size_divisor_of

    opts, grader_overrides = parse_options(pairs)
    options = StageOptions.from_mapping(opts)
    bundle = load_bundle(bundle_path)
    if bundle.has_grading:
        print(f"{bundle_path}: already has a grading head; training a new one")
    cohort = cohort or Path(bundle.validation.get("data", {}).get("cohort", ""))
    dm = CohortDataModule(
        cohort=cohort,
        split=OmegaConf.to_container(bundle.config.data.split, resolve=True),
        preprocessing=bundle.preprocessing,
        loader={"verify": False},
    )
    dm.setup("fit")
    net = bundle.build_network()
    tap = FeatureTap(net)
    channels = tap.channels
    tap.remove()
    prep = bundle.preprocessing
    grader_kwargs = {
        **_staged_grading_config(),
        "feature_channels": int(channels),
        "spacing": [float(s) for s in prep.target_spacing],
        "max_grade": int(dm.grade_scale.max_grade),
        "n_regions": int(dm.n_regions),
        "bone_label": dm.schema.labels.get("bone"),
        "learn_thresholds": False,
        **grader_overrides,
    }
    with torch.random.fork_rng():
        torch.manual_seed(options.seed)
        grader = build_grader(**grader_kwargs)
    segmenter = Predictor(bundle).segmenter  # the sliding-window inference predict segments with
    result = run_grading_stage(
        net,
        grader,
        dm,
        options,
        DEFAULT_LOSS_WEIGHTS,
        canvas_size=list(prep.canvas_size or prep.patch_size),
        size_divisor=size_divisor_of(net),
        segment=segmenter.infer,
    )
    return result, bundle, net, grader, grader_kwargs


def main() -> None:
    import torch
    from omegaconf import OmegaConf

    from nxp2seg.models.bundle import write_bundle
    from nxp2seg.models.myositis import GradingNet

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundle", type=Path)
    ap.add_argument("options", nargs="*", help="StageOptions as key=value")
    ap.add_argument("--out", type=Path, help="write a bundle with the head here")
    ap.add_argument("--cohort", type=Path, help="the cohort (default: the bundle's)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result, bundle, net, grader, grader_kwargs = stage_on_bundle(args.bundle, args.options, args.cohort)
    prep = bundle.preprocessing
    print(json.dumps({"metrics": result.metrics, "stage": result.summary}, indent=1))
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.out:
        validation = dict(bundle.validation)
        for split, values in result.metrics.items():
            validation[split] = {**validation.get(split, {}), **values}
        validation["grading_stage"] = result.summary
        config = OmegaConf.create(OmegaConf.to_container(bundle.config, resolve=True))
        config.grading_stage = OmegaConf.create(result.summary["options"])
        write_bundle(
            args.out,
            GradingNet(net, grader),
            config=config,
            dataset=bundle.dataset,
            preprocessing=prep,
            validation=validation,
            network=bundle.manifest["network"],
            grader={
                "target": "nxp2seg.models.grading.build_grader",
                "kwargs": grader_kwargs,
                "state_prefix": "grader.",
            },
        )
        print(f"bundle with the grading head written to {args.out.resolve()}")


if __name__ == "__main__":
    main()
