"""Train the segmenter (and grading head): ``python -m nxp2seg.train [overrides]``.

With no overrides it generates (once) the default phantom cohort in the cache
folder, trains on CPU and writes the model bundle to ``OUTPUT_DIR/bundle``,
printing its path. Overrides select data, model, trainer, experiment::

    python -m nxp2seg.train data.cohort=/data/COHORT trainer=gpu
    python -m nxp2seg.train experiment=smoke
    python -m nxp2seg.train grading=head          # segmentation + grading head, trained jointly
    python -m nxp2seg.train grading=staged        # ... the head trained after, on frozen features
    python -m nxp2seg.train ckpt_path=outputs/train/RUN/checkpoints/last.ckpt

:func:`train` is a plain function of the composed config (tests call it);
:func:`main` is the Hydra entry point.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nxp2seg.data.sides import lr_swap_lut, orientation_lr_axis, side_lut

__all__ = [
    "train",
    "main",
    "build_network",
    "build_grader",
    "grading_enabled",
    "grading_mode",
    "summarize_metrics",
]

log = logging.getLogger(__name__)


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


def grading_mode(cfg: DictConfig) -> str:
    """``none`` (segmentation only), ``joint`` (``grading=head``: the head trains with the
    segmenter on whole cases) or ``staged`` (``grading=staged``: ``grading_stage.enabled``,
    the head trains after the segmenter on frozen features)."""
    has_head = cfg.model.get("grading") is not None
    if bool((cfg.get("grading_stage") or {}).get("enabled", False)):
        if not has_head:
            raise ValueError(
                "grading_stage.enabled needs the head's config in model.grading: use grading=staged"
            )
        return "staged"
    return "joint" if has_head else "none"


def grading_enabled(cfg: DictConfig) -> bool:
    """Whether the LightningModule carries the grading head while fitting (``joint`` mode)."""
    return grading_mode(cfg) == "joint"


def build_grader(
    cfg: DictConfig, datamodule: Any, net: Any, **overrides: Any
) -> tuple[Any, dict[str, Any]]:
    """Build ``cfg.model.grading`` for the network and the cohort.

    Runtime arguments: ``feature_channels`` (the network's last decoder width),
    ``spacing`` (target spacing), ``max_grade`` (the cohort's edema scale,
    ``dataset.json`` ``grade_scale``), ``n_regions`` (region slots per station) and
    ``bone_label`` (the schema's ``bone`` label, or ``None``);
    ``overrides`` replace config values (the grading stage: ``learn_thresholds=False``).

    Returns:
        ``(grader, spec)``; ``spec`` (``target``, ``kwargs``, ``state_prefix``)
        rebuilds it from a bundle.
    """
    from nxp2seg.models.grading import FeatureTap

    tap = FeatureTap(net)
    channels = tap.channels
    tap.remove()
    runtime = {
        "feature_channels": int(channels),
        "spacing": [float(s) for s in datamodule.preprocessing.target_spacing],
        "max_grade": int(datamodule.grade_scale.max_grade),
        "n_regions": int(datamodule.n_regions),
        "bone_label": datamodule.schema.labels.get("bone"),
        **overrides,
    }
    return _build_with_spec(cfg.model.grading, runtime, "grader.")


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
) -> tuple[dict[str, Any], Any]:
    """The frozen-feature grading stage (``grading=staged``) on the fitted ``model``.

    Builds the head from ``model.grading`` with fixed thresholds, trains it on the
    region features of the frozen network (:func:`nxp2seg.models.grading_stage.run_grading_stage`)
    and attaches it to ``model`` (``grader.*`` in the bundle). ``fast_dev_run``: one epoch.
    ``device``: where to run it (Lightning leaves the model on the CPU after fitting;
    default: where the model is). ``unseen_dice``: the fit's ``val/dice_mean``, the
    target of the stage's perturbation calibration.

    Returns:
        ``(grader_spec, result)``: the bundle's ``grader`` entry and the
        :class:`~nxp2seg.models.grading_stage.StageResult`.
    """
    import dataclasses

    import torch

    from nxp2seg.models import grading_stage as stage

    options = stage.StageOptions.from_mapping(
        OmegaConf.to_container(cfg.grading_stage, resolve=True)
    )
    if fast_dev_run:
        options = dataclasses.replace(options, epochs=1)
    with torch.random.fork_rng():
        torch.manual_seed(int(options.seed))
        grader, spec = build_grader(cfg, datamodule, model.net, learn_thresholds=False)
    if device is not None:
        model.to(device)
    grader = grader.to(next(model.net.parameters()).device)
    prep = datamodule.preprocessing
    result = stage.run_grading_stage(
        model.net,
        grader,
        datamodule,
        options,
        model.loss_weights,
        model.regression,
        model.beta,
        canvas_size=list(prep.canvas_size or prep.patch_size),
        size_divisor=model.size_divisor,
        segment=model.infer,  # the sliding-window inference predict segments with
        unseen_dice=unseen_dice,
    )
    model.attach_grader(grader)
    return spec, result


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the segmenter (and its grading head, with ``model.grading``) and write its bundle.

    Steps: seed; data module (generates the phantom if needed, splits by
    subject, plans preprocessing); network for that plan; module; callbacks,
    loggers, trainer; fit (resuming from ``cfg.ckpt_path`` restores optimizer,
    scheduler and loop state); load the best checkpoint's weights; validate
    them and score the held-out test subjects; with ``grading=staged``, train the grading
    head on the frozen network's features (:func:`run_grading_stage`); write the bundle
    to ``cfg.bundle_dir``.

    Returns:
        ``(metrics, objects)``: the last logged metrics (``train/loss``,
        ``val/dice_mean``, ``test/dice_mean``, ...) as floats, and ``cfg``,
        ``datamodule``, ``model``, ``trainer``, ``callbacks``, ``loggers``,
        ``bundle_dir``, ``validation``, ``grading_stage`` (the
        :class:`~nxp2seg.models.grading_stage.StageResult` with ``grading=staged``, else ``None``).
    """
    import pytorch_lightning as pl
    import torch

    from nxp2seg.models.bundle import write_bundle
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

    log.info("data <%s>", cfg.data._target_)
    mode = grading_mode(cfg)
    grading = mode == "joint"
    data_kwargs = {} if cfg.data.get("grading") is not None else {"grading": grading}
    datamodule = hydra.utils.instantiate(cfg.data, **data_kwargs)
    datamodule.prepare_data()
    datamodule.setup("fit")
    prep = datamodule.preprocessing
    log.info(
        "preprocessing: spacing %s mm, patch %s, canvas %s",
        prep.target_spacing,
        prep.patch_size,
        prep.canvas_size,
    )

    net, net_spec = build_network(cfg, datamodule)
    grader, grader_spec = build_grader(cfg, datamodule, net) if grading else (None, None)
    extra: dict[str, Any] = {"grading": None} if mode == "staged" else {}
    if grading:
        from nxp2seg.models.myositis import size_divisor_of

        extra = {
            "grading": grader,
            "grade_scale": datamodule.grade_scale.name,
            "canvas_size": list(prep.canvas_size or prep.patch_size),
            "size_divisor": size_divisor_of(net),
        }
    model = hydra.utils.instantiate(
        cfg.model,
        net=net,
        region_labels=datamodule.region_labels(),
        mean_regions=list(datamodule.schema.regions),
        patch_size=list(prep.patch_size),
        spacing=list(prep.target_spacing),
        lr_permutation=_lr_permutation(datamodule),
        laterality_channel=len(prep.channels) if prep.laterality else None,
        lr_axis=orientation_lr_axis(prep.orientation),
        side_lut=[int(v) for v in side_lut(datamodule.schema)],
        **extra,
    )

    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    for lg in loggers:
        lg.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), "preprocessing": prep.to_dict()}
        )

    trainer.fit(
        model=model,
        datamodule=datamodule,
        ckpt_path=cfg.get("ckpt_path"),
        weights_only=True,  # checkpoints hold tensors and plain values only: never unpickle code
    )
    metrics = _floats(dict(trainer.callback_metrics))

    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
    score = getattr(ckpt_cb, "best_model_score", None) if best else None
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        score = getattr(ckpt_cb, "best_model_score", None)
        log.info(
            "best checkpoint: %s (val/dice_mean %.4f)",
            best,
            float(score) if score is not None else float("nan"),
        )
    validation: dict[str, Any] = {
        "best_checkpoint": best or None,
        "epoch": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
    }
    last_val = metrics.get("val/dice_mean")
    best_is_last = (
        score is not None and last_val is not None and math.isclose(float(score), float(last_val), rel_tol=1e-9)
    ) if best else False
    if cfg.get("validate_best", True) and not trainer.fast_dev_run and not best_is_last:
        metrics.update(
            _floats(trainer.validate(model=model, datamodule=datamodule, verbose=False)[0])
        )
    validation["val"] = summarize_metrics(metrics, "val")
    if cfg.get("test", True) and datamodule.has_test_cases() and not trainer.fast_dev_run:
        metrics.update(_floats(trainer.test(model=model, datamodule=datamodule, verbose=False)[0]))
        validation["test"] = summarize_metrics(metrics, "test")
    validation["data"] = datamodule.describe()
    stage_result = None
    if mode == "staged" and trainer.is_global_zero and not datamodule.grading_items("train"):
        log.warning(
            "grading=staged but the cohort has no graded training case (grades.csv): the grading "
            "stage is skipped and the bundle segments only. Add the readers' grades to grade."
        )
        validation["grading_stage"] = {"skipped": "no graded training case"}
    elif mode == "staged" and trainer.is_global_zero:
        grader_spec, stage_result = run_grading_stage(
            cfg,
            datamodule,
            model,
            fast_dev_run=bool(trainer.fast_dev_run),
            device=trainer.strategy.root_device,
            unseen_dice=metrics.get("val/dice_mean"),
        )
        for split, values in stage_result.metrics.items():
            validation.setdefault(split, {}).update(values)
            metrics.update({f"{split}/{k}": v for k, v in values.items()})
        validation["grading_stage"] = stage_result.summary

    bundle_dir = Path(cfg.get("bundle_dir") or output_dir / "bundle")
    if trainer.is_global_zero:
        model_cpu = model.to("cpu")
        write_bundle(
            bundle_dir,
            model_cpu,
            config=cfg,
            dataset=datamodule.cohort.dataset,
            preprocessing=prep,
            validation=validation,
            network=net_spec,
            grader=grader_spec,
        )
        print(f"nxp2seg: model bundle written to {bundle_dir.resolve()}")
        summary = {k: validation.get(k, {}).get("dice_mean") for k in ("val", "test")}
        print(f"nxp2seg: dice_mean {json.dumps(summary)}")
        if mode != "none":
            keys = ("edema_kappa_quadratic", "edema_icc", "pattern_kappa", "station_score_icc")
            graded = {k: {m: validation.get(k, {}).get(m) for m in keys} for k in ("val", "test")}
            print(f"nxp2seg: grading {json.dumps(graded)}")
    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "trainer": trainer,
        "callbacks": callbacks,
        "loggers": loggers,
        "bundle_dir": bundle_dir,
        "validation": validation,
        "grading_stage": stage_result,
    }
    return metrics, objects


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
