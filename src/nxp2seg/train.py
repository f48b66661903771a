"""Train the segmenter (and grading head): ``python -m nxp2seg.train [overrides]``.

With no overrides it generates (once) the default phantom cohort in the cache
folder, trains on CPU and writes the model bundle to ``OUTPUT_DIR/bundle``,
printing its path. Overrides select data, model, trainer, experiment::

    python -m nxp2seg.train data.cohort=/data/COHORT trainer=gpu
    python -m nxp2seg.train experiment=smoke
    python -m nxp2seg.train grading=none          # segmentation only (default: then the grader)
    python -m nxp2seg.train ckpt_path=outputs/train/RUN/checkpoints/last.ckpt

:func:`train` is a plain function of the composed config (tests call it);
:func:`main` is the Hydra entry point.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from nxp2seg.data.sides import lr_swap_lut, orientation_lr_axis, side_lut

__all__ = [
    "GradingFit",
    "SegmenterFit",
    "build_grader",
    "build_network",
    "export_bundle",
    "fit_grading_head",
    "fit_segmenter",
    "grading_enabled",
    "main",
    "setup_data",
    "setup_run",
    "summarize_metrics",
    "train",
]

log = logging.getLogger(__name__)
# Package imports of the heavy layers (torch, Lightning, MONAI, the models) are inside the functions
# that use them: `import nxp2seg.train` takes 2.9 s, 23 s with them at module top (wall time on
# this 2-core machine, shared), paid by every `--help` and every refused override.


def _instantiate_dict(node: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (callbacks, logger)."""
    out = []
    for name, conf in (node or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("instantiating %s <%s>", name, conf._target_)
            out.append(hydra.utils.instantiate(conf))
    return out


def _build_with_spec(node: DictConfig, runtime: dict[str, Any], state_prefix: str) -> tuple[Any, dict[str, Any]]:
    """Instantiate a ``_partial_`` config node with run-time arguments, and the spec that rebuilds it.

    The spec (``target``, ``kwargs`` = config values overridden by ``runtime``,
    ``state_prefix``) is what the bundle records (:mod:`nxp2seg.models.bundle`).
    """
    module = hydra.utils.instantiate(node)(**runtime)
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
    return module, {"target": node._target_, "kwargs": {**kwargs, **runtime}, "state_prefix": state_prefix}


def build_network(cfg: DictConfig, datamodule: Any) -> tuple[Any, dict[str, Any]]:
    """Build ``cfg.model.net`` for the data: channels, classes, spacing and patch size.

    Returns:
        ``(net, spec)`` where ``spec`` (``target``, ``kwargs``, ``state_prefix``)
        is what the bundle records to rebuild the same network.
    """
    prep = datamodule.preprocessing
    runtime = {
        "in_channels": int(datamodule.in_channels),
        "out_channels": int(datamodule.num_classes),
        "spacing": [float(s) for s in prep.target_spacing],
        "patch_size": [int(p) for p in prep.patch_size],
    }
    return _build_with_spec(cfg.model.net, runtime, "net.")


def grading_enabled(cfg: DictConfig) -> bool:
    """Whether the grading stage runs after the segmentation fit (``grading.enabled``;
    ``grading=staged`` is the default, ``grading=none`` segments only)."""
    return bool((cfg.get("grading") or {}).get("enabled", False))


def build_grader(cfg: DictConfig, datamodule: Any, net: Any) -> tuple[Any, dict[str, Any]]:
    """Build the grader of ``cfg.grading`` for the network and the cohort.

    Runtime arguments: ``feature_channels`` (the network's last decoder width),
    ``spacing`` (target spacing), ``max_grade`` (the cohort's edema scale,
    ``dataset.json`` ``grade_scale``), ``n_regions`` (region slots per station),
    ``slot_counts`` (graded regions of each station) and ``bone_label`` (the
    schema's ``bone`` label, or ``None``).

    Returns:
        ``(grader, spec)``; ``spec`` (``target``, ``kwargs``, ``state_prefix``)
        rebuilds it from a bundle.
    """
    from nxp2seg.data.regions import slot_counts
    from nxp2seg.models.grading import FeatureTap
    from nxp2seg.models.grading import build_grader as build
    from nxp2seg.models.grading_spec import instantiate_spec

    tap = FeatureTap(net)
    channels = tap.channels
    tap.remove()
    spec = instantiate_spec(cfg.grading).to_dict()
    kwargs = {
        "spec": spec,
        "feature_channels": int(channels),
        "spacing": [float(s) for s in datamodule.preprocessing.target_spacing],
        "max_grade": int(datamodule.grade_scale.max_grade),
        "n_regions": int(datamodule.n_regions),
        "slot_counts": list(slot_counts(datamodule.schema)),
        "bone_label": datamodule.schema.labels.get("bone"),
    }
    return build(**kwargs), {"target": "nxp2seg.models.grading.build_grader", "kwargs": kwargs,
                             "state_prefix": "grader."}


def summarize_metrics(metrics: dict[str, Any], stage: str) -> dict[str, Any]:
    """``{"val/dice/x": v, ...}`` -> ``{"dice_mean": ..., "dice": {x: v}, "hd95_mm": {...}}`` of one stage."""
    out: dict[str, Any] = {}
    prefix = f"{stage}/"
    for key, value in sorted(metrics.items()):
        if not key.startswith(prefix):
            continue
        v = float(value)
        if math.isnan(v):
            continue
        parts = key[len(prefix) :].split("/")
        if len(parts) == 1:
            out[parts[0]] = v
        else:
            out.setdefault(parts[0], {})[parts[1]] = v
    return out


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _lr_permutation(datamodule: Any) -> list[int] | None:
    """Output channel -> its right/left twin (identity for unsided labels); None if not mirrorable."""
    try:
        lut = lr_swap_lut(datamodule.schema)
    except ValueError:
        return None
    return [int(v) for v in lut[: datamodule.num_classes]]


def run_grading_stage(
    cfg: DictConfig,
    datamodule: Any,
    model: Any,
    fast_dev_run: bool = False,
    device: Any = None,
    unseen_dice: float | None = None,
) -> tuple[dict[str, Any], Any, Any]:
    """The grading stage (:mod:`nxp2seg.models.grading_stage`) on the fitted segmenter ``model``.

    Builds the grader of ``cfg.grading``, learns it from the cohort on the frozen
    network's segmentations and returns it inside the inference model.
    ``fast_dev_run``: one epoch per MLP member. ``device``: where to run it
    (Lightning leaves the model on the CPU after fitting). ``unseen_dice``: the
    fit's ``val/dice_mean``, the target of the perturbation's calibration.

    Returns:
        ``(grader_spec, result, graded)``: the bundle's ``grader`` entry, the
        :class:`~nxp2seg.models.grading_stage.StageResult` and the
        :class:`~nxp2seg.models.myositis.GradingNet` (network + grader).
    """
    import dataclasses

    import torch

    from nxp2seg.models.grading_spec import instantiate_spec
    from nxp2seg.models.grading_stage import run_grading_stage as run_stage
    from nxp2seg.models.myositis import GradingNet, size_divisor_of

    spec = instantiate_spec(cfg.grading)
    if fast_dev_run:
        spec = dataclasses.replace(spec, fit=dataclasses.replace(spec.fit, epochs=1))
    if device is not None:
        model.to(device)
    with torch.random.fork_rng():
        torch.manual_seed(int(spec.fit.seed))
        grader, grader_spec = build_grader(cfg, datamodule, model.net)
    prep = datamodule.preprocessing
    graded = GradingNet(
        model.net,
        grader,
        canvas_size=list(prep.canvas_size or prep.patch_size),
        size_divisor=size_divisor_of(model.net),
        schema=datamodule.schema,
        grade_scale=datamodule.grade_scale.name,
    ).to(next(model.net.parameters()).device)
    dev = next(model.net.parameters()).device
    result = run_stage(
        graded,
        datamodule,
        spec,
        segment=model.infer,  # the sliding-window inference predict segments with
        unseen_dice=unseen_dice,
        accelerator="gpu" if dev.type == "cuda" else "cpu",
    )
    return grader_spec, result, graded


@dataclass
class SegmenterFit:
    """What :func:`fit_segmenter` returns: the fitted module and what the bundle records of it.

    Attributes:
        model: the LightningModule (:class:`~nxp2seg.models.segmenter.Segmenter`), the best
            checkpoint's weights loaded.
        net_spec: the network's rebuild spec (bundle ``network``).
        trainer, callbacks, loggers: the Lightning objects of the fit.
        metrics: the last logged metrics as floats (``train/loss``, ``val/dice_mean``, ...).
        validation: the bundle's ``validation.json`` so far (best checkpoint, ``val``, ``test``, ``data``).
    """

    model: Any
    net_spec: dict[str, Any]
    trainer: Any
    callbacks: list[Any]
    loggers: list[Any]
    metrics: dict[str, float]
    validation: dict[str, Any]


@dataclass
class GradingFit:
    """What :func:`fit_grading_head` returns: the grader's rebuild spec, the stage's
    :class:`~nxp2seg.models.grading_stage.StageResult` and the exported
    :class:`~nxp2seg.models.myositis.GradingNet` (network + grader)."""

    grader_spec: dict[str, Any]
    result: Any
    graded: Any


def setup_run(cfg: DictConfig) -> Path:
    """Seed and thread settings of the run; the output folder (created)."""
    import pytorch_lightning as pl
    import torch

    from nxp2seg.runtime import keep_freed_memory

    keep_freed_memory()  # no page faults on every step's activations (nxp2seg.runtime)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(str(cfg.float32_matmul_precision))
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def setup_data(cfg: DictConfig, start: Any = None) -> Any:
    """The data module of ``cfg.data``: cohort prepared (the phantom generated once), split by
    subject, preprocessing planned (fine-tuning: the ``start`` bundle's preprocessing). The
    segmenter's loaders carry no grades (the grader learns from the cohort after the fit,
    :func:`fit_grading_head`)."""
    log.info("data <%s>", cfg.data._target_)
    data_kwargs = {} if cfg.data.get("grading") is not None else {"grading": False}
    datamodule = hydra.utils.instantiate(cfg.data, **data_kwargs)
    if start is not None:  # the bundle's preprocessing, not a new plan
        datamodule.use_preprocessing(start.preprocessing)
    datamodule.prepare_data()
    datamodule.setup("fit")
    prep = datamodule.preprocessing
    log.info("preprocessing: spacing %s mm, patch %s, canvas %s", prep.target_spacing,
             prep.patch_size, prep.canvas_size)
    return datamodule


def fit_segmenter(cfg: DictConfig, datamodule: Any, start: Any = None) -> SegmenterFit:
    """Fit the segmenter of ``cfg.model`` on ``datamodule`` and score its best weights.

    Builds the network for the planned preprocessing (fine-tuning: the ``start``
    bundle's network, :mod:`nxp2seg.models.finetune`), the module, callbacks,
    loggers and trainer; fits (resuming from ``cfg.ckpt_path`` restores
    optimizer, scheduler and loop state); loads the best checkpoint's weights;
    validates them (``validate_best``) and scores the held-out test subjects (``test``).
    Without validation cases the fixed schedule runs and the last weights are kept.
    """
    import pytorch_lightning as pl

    from nxp2seg.models.finetune import without_val_monitors

    prep = datamodule.preprocessing
    if start is not None:
        start.check_cohort(datamodule.cohort.dataset, str(datamodule.cohort.root))
        net, net_spec = start.build_network(datamodule.num_classes, datamodule.schema)
    else:
        net, net_spec = build_network(cfg, datamodule)
    model_cfg = cfg.model.copy()  # init_from is read by fine_tune_start, not by the module
    with open_dict(model_cfg):
        model_cfg.pop("init_from", None)
    model = hydra.utils.instantiate(
        model_cfg,
        net=net,
        region_labels=datamodule.region_labels(),
        mean_regions=list(datamodule.schema.regions),
        patch_size=list(prep.patch_size),
        spacing=list(prep.target_spacing),
        lr_permutation=_lr_permutation(datamodule),
        laterality_channel=len(prep.channels) if prep.laterality else None,
        lr_axis=orientation_lr_axis(prep.orientation),
        side_lut=[int(v) for v in side_lut(datamodule.schema)],
        unannotated_labels=datamodule.cohort.dataset.unannotated_values(),
    )
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    no_val: dict[str, Any] = {}
    if not datamodule.splits["val"]:  # the fixed schedule; the last weights are the model
        callbacks = without_val_monitors(callbacks)
        no_val = {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                  **no_val)
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "preprocessing": prep.to_dict()})
    trainer.fit(
        model=model,
        datamodule=datamodule,
        ckpt_path=cfg.get("ckpt_path"),
        weights_only=True,  # checkpoints hold tensors and plain values only: never unpickle code
    )
    metrics = _floats(dict(trainer.callback_metrics))
    validation, best_is_last = _load_best(trainer, model, use_best=not no_val)
    if cfg.get("validate_best", True) and not trainer.fast_dev_run and not best_is_last(metrics) and not no_val:
        metrics.update(_floats(trainer.validate(model=model, datamodule=datamodule, verbose=False)[0]))
    validation["val"] = summarize_metrics(metrics, "val")
    if cfg.get("test", True) and datamodule.has_test_cases() and not trainer.fast_dev_run:
        metrics.update(_floats(trainer.test(model=model, datamodule=datamodule, verbose=False)[0]))
        validation["test"] = summarize_metrics(metrics, "test")
    validation["data"] = datamodule.describe()
    return SegmenterFit(model, net_spec, trainer, callbacks, loggers, metrics, validation)


def _load_best(trainer: Any, model: Any, use_best: bool = True) -> tuple[dict[str, Any], Any]:
    """Load the best checkpoint's weights into ``model`` (``use_best``; else the last weights
    stay); the validation record and a test of whether the best epoch is the last one (then
    validating again would repeat it)."""
    import torch

    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None and use_best else ""
    score = getattr(ckpt_cb, "best_model_score", None) if best else None
    if best:
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        log.info("best checkpoint: %s (val/dice_mean %.4f)", best,
                 float(score) if score is not None else float("nan"))
    validation = {"best_checkpoint": best or None, "epoch": int(trainer.current_epoch),
                  "global_step": int(trainer.global_step)}

    def best_is_last(metrics: dict[str, float]) -> bool:
        last = metrics.get("val/dice_mean")
        return bool(best) and score is not None and last is not None and math.isclose(
            float(score), float(last), rel_tol=1e-9)

    return validation, best_is_last


def fit_grading_head(cfg: DictConfig, datamodule: Any, fit: SegmenterFit) -> GradingFit | None:
    """Learn the grader of ``cfg.grading`` from the cohort on the fitted segmenter's frozen
    network (``grading.enabled``; on rank 0), or ``None``.

    Skipped, with a warning in the log and ``validation.grading_stage``, when the
    cohort has no graded training case. Adds the stage's figures to
    ``fit.metrics`` and ``fit.validation``.
    """
    if not grading_enabled(cfg) or not fit.trainer.is_global_zero:
        return None
    if not datamodule.grading_items("train"):
        log.warning(
            "grading=staged but the cohort has no graded training case (grades.csv): the grading "
            "stage is skipped and the bundle segments only. Add the readers' grades to grade."
        )
        fit.validation["grading_stage"] = {"skipped": "no graded training case"}
        return None
    grader_spec, result, graded = run_grading_stage(
        cfg,
        datamodule,
        fit.model,
        fast_dev_run=bool(fit.trainer.fast_dev_run),
        device=fit.trainer.strategy.root_device,
        unseen_dice=fit.metrics.get("val/dice_mean"),
    )
    for split, values in result.metrics.items():
        fit.validation.setdefault(split, {}).update(values)
        fit.metrics.update({f"{split}/{k}": v for k, v in values.items()})
    fit.validation["grading_stage"] = result.summary
    return GradingFit(grader_spec, result, graded)


def export_bundle(cfg: DictConfig, datamodule: Any, fit: SegmenterFit, grading: GradingFit | None,
                  bundle_dir: Path) -> Path:
    """Write the model bundle (the network, with the grader when there is one) and print its path
    and headline figures."""
    from nxp2seg.data.signature import cohort_signature
    from nxp2seg.models.bundle import write_bundle

    exported = grading.graded if grading is not None else fit.model
    write_bundle(
        bundle_dir,
        exported.to("cpu"),  # the network (+ the grader): net.*, grader.*
        config=cfg,
        dataset=datamodule.cohort.dataset,
        preprocessing=datamodule.preprocessing,
        validation=fit.validation,
        network=fit.net_spec,
        grader=grading.grader_spec if grading is not None else None,
        # the out-of-distribution guard's reference: the training cases' image signature
        signature=cohort_signature(datamodule.cohort, datamodule.splits["train"]),
    )
    print(f"nxp2seg: model bundle written to {bundle_dir.resolve()}")
    summary = {k: fit.validation.get(k, {}).get("dice_mean") for k in ("val", "test")}
    print(f"nxp2seg: dice_mean {json.dumps(summary)}")
    if grading is not None:
        keys = ("edema_kappa_quadratic", "edema_icc", "pattern_kappa", "station_score_icc")
        figures = {k: {m: fit.validation.get(k, {}).get(m) for m in keys} for k in ("val", "test")}
        print(f"nxp2seg: grading {json.dumps(figures)}")
    return bundle_dir


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the segmenter, learn its grader (``grading.enabled``) and write the bundle.

    :func:`setup_data` -> :func:`fit_segmenter` -> :func:`fit_grading_head` ->
    :func:`export_bundle` (to ``cfg.bundle_dir``, on rank 0).

    Returns:
        ``(metrics, objects)``: the last logged metrics (``train/loss``,
        ``val/dice_mean``, ``test/dice_mean``, ...) as floats, and ``cfg``,
        ``datamodule``, ``model``, ``trainer``, ``callbacks``, ``loggers``,
        ``bundle_dir``, ``validation``, ``grading_stage`` (the
        :class:`~nxp2seg.models.grading_stage.StageResult` when the grader was learned, else
        ``None``), ``graded`` (the exported :class:`~nxp2seg.models.myositis.GradingNet`, or the
        segmenter).
    """
    from nxp2seg.models.finetune import fine_tune_start

    output_dir = setup_run(cfg)
    start = fine_tune_start(cfg)  # model.init_from: the bundle to fine-tune from, or None
    datamodule = setup_data(cfg, start)
    fit = fit_segmenter(cfg, datamodule, start)
    grading = fit_grading_head(cfg, datamodule, fit)
    bundle_dir = Path(cfg.get("bundle_dir") or output_dir / "bundle")
    if fit.trainer.is_global_zero:
        export_bundle(cfg, datamodule, fit, grading, bundle_dir)
    objects = {
        "cfg": cfg, "datamodule": datamodule, "model": fit.model, "trainer": fit.trainer,
        "callbacks": fit.callbacks, "loggers": fit.loggers, "bundle_dir": bundle_dir,
        "validation": fit.validation, "grading_stage": grading.result if grading else None,
        "graded": grading.graded if grading else fit.model,
    }
    return fit.metrics, objects


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point (``python -m nxp2seg.train``, ``nxp2seg-train``)."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r".*LeafSpec.*"
    )  # Lightning's pytree shim under new torch
    metrics, _ = train(cfg)
    return metrics.get("val/dice_mean")


if __name__ == "__main__":
    main()
