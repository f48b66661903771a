"""Grading stage on frozen features: train the grading head after the segmenter, in seconds.

The joint mode (``grading=head``) trains the head with the segmenter on whole
cases, which costs about twice the voxels per step of patch training. This
stage instead runs once the segmentation fit is over (``grading=staged``):

1. Whole-volume items with the readers' targets for the graded cases of the
   train, val and test splits -- cases *without* masks included
   (:meth:`~nxp2seg.data.datamodule.CohortDataModule.grading_items`) --
   preprocessed as the bundle preprocesses
   (:func:`~nxp2seg.data.transforms.preprocess_transforms`).
2. Per case, under ``torch.no_grad``, the frozen network's whole-volume pass
   exactly as :meth:`~nxp2seg.models.myositis.GradingNet.predict` runs it
   (padded by :func:`~nxp2seg.models.myositis.pad_to_grid` to the canvas and
   the network's stride): decoder features read by
   :class:`~nxp2seg.models.grading.FeatureTap`, softmax of the station-masked
   logits, then :class:`~nxp2seg.models.grading.RegionFeatures` -> ``(R, F)``.
   The soft thresholds are fixed (nothing upstream of the head learns).
   With ``mirror``, each training case is also extracted mirrored left-right
   (:class:`~nxp2seg.data.transforms.RandFlipSwapLRd` with probability 1:
   laterality negated, right and left grade targets swapped), doubling the
   training set.
3. Only :class:`~nxp2seg.models.grading.GradingHead` trains on these tensors:
   first its linear read-outs of fat and the flags, as penalised GLMs on
   standardised features (:func:`fit_readouts`); then the edema/pattern MLP
   (each ensemble member in turn) with the masked losses
   (:func:`~nxp2seg.models.losses.grading_losses`) and the configured loss
   weights, AdamW, mini-batches of cases, a fixed schedule (``monitor=last``)
   or the epoch with the best validation edema kappa or loss.
4. Validation and test agreement (:func:`~nxp2seg.models.metrics.grading_metrics`)
   and the readers' own edema kappa on the same cases
   (:func:`~nxp2seg.models.metrics.rater_edema_kappa`).

The head then sits in the model as a jointly trained one would
(:meth:`~nxp2seg.models.myositis.MyositisModel.attach_grader`): ``grader.*``
beside ``net.*`` in the bundle, and ``load_bundle(...).build_model()`` grades
new scans with it through the same forward pass the features came from.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nxp2seg.models.grading import FeatureTap, Grader, RegionFeatures
from nxp2seg.models.losses import grading_losses
from nxp2seg.models.myositis import pad_to_grid
from nxp2seg.models.segmenter import network_logits

__all__ = [
    "StageOptions",
    "CaseFeatures",
    "StageResult",
    "case_region_features",
    "extract_features",
    "fit_head",
    "fit_readouts",
    "head_rows",
    "run_grading_stage",
    "TARGET_KEYS",
]

log = logging.getLogger(__name__)

#: Per-case targets carried with the features (NaN / -1 = not graded).
TARGET_KEYS: tuple[str, ...] = (
    "edema_target",
    "fat_target",
    "fascial_target",
    "subcut_target",
    "pattern_target",
    "pattern_index",
)
MONITORS: tuple[str, ...] = ("last", "val_loss", "edema_kappa_quadratic")


@dataclass(frozen=True)
class StageOptions:
    """The grading stage (config block ``grading_stage``).

    Attributes:
        enabled: run the stage after the segmentation fit (``grading=staged``).
        epochs: passes over the training cases.
        lr, weight_decay: AdamW's.
        batch_size: cases per step (``0``: all training cases in one step).
        mirror: also extract each training case mirrored left-right (targets swapped).
        monitor: which epoch's head is kept: ``last`` (a fixed schedule of
            ``epochs``; the default: picking an epoch on a handful of validation
            cases picks their noise, and an epoch good for edema can leave fat or
            the flags untrained), ``edema_kappa_quadratic`` (the
            validation cases' edema kappa, highest; ties and NaN fall back to the
            loss) or ``val_loss`` (the weighted grading loss on the validation
            cases, lowest; it tends to stop early, when the pattern and flag
            terms start to overfit).
        patience: stop after this many epochs without improvement (``0``: run all epochs).
        seed: of the head's initialisation, the batch order and dropout.
        readout_l2: L2 penalty of the linear read-outs (fat, fascial, subcutaneous
            edema; :func:`fit_readouts`), per standardised feature.
        perturb: strength of the input perturbation while the segmenter segments
            the training cases whose masks it trained on
            (:mod:`nxp2seg.models.perturbation`), so that their regions are as
            imperfect as those of new exams: ``auto`` (calibrated so that their
            Dice falls to the validation cases'), a number, or ``0`` (none).
        calibration_cases: cases of each kind (seen, validation) used to calibrate.
    """

    enabled: bool = False
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 16
    mirror: bool = False
    monitor: str = "last"
    patience: int = 0
    seed: int = 0
    readout_l2: float = 0.01
    perturb: Any = "auto"
    calibration_cases: int = 16

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ValueError(
                f"grading_stage.monitor {self.monitor!r}: choose one of {MONITORS}"
            )
        if not (self.perturb == "auto" or (isinstance(self.perturb, (int, float))
                                           and not isinstance(self.perturb, bool) and self.perturb >= 0)):
            raise ValueError(
                f"grading_stage.perturb must be 'auto' or a number >= 0, got {self.perturb!r}"
            )
        if float(self.readout_l2) < 0:
            raise ValueError(f"grading_stage.readout_l2 must be >= 0, got {self.readout_l2}")
        if int(self.epochs) < 1 or int(self.batch_size) < 0 or int(self.patience) < 0:
            raise ValueError(
                "grading_stage: epochs must be >= 1, batch_size and patience >= 0 "
                f"(got epochs={self.epochs}, batch_size={self.batch_size}, "
                f"patience={self.patience})"
            )

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> StageOptions:
        from nxp2seg.config_utils import dataclass_from_mapping

        return dataclass_from_mapping(cls, d, "grading_stage")


@dataclass
class CaseFeatures:
    """The head's whole input for a set of cases, and the readers' targets.

    Attributes:
        x: ``(N, R, F)`` region feature vectors (:class:`RegionFeatures`), no gradient.
        station_index: ``(N,)``.
        targets: :data:`TARGET_KEYS` -> ``(N, R)`` / ``(N, 4)`` / ``(N,)`` float tensors.
        case_ids: ``N`` case ids (a mirrored copy keeps its case's id).
        mirrored: ``(N,)`` bool, the left-right mirrored copies.
        has_mask: ``(N,)`` bool, cases whose label map the segmenter saw.
    """

    x: torch.Tensor
    station_index: torch.Tensor
    targets: dict[str, torch.Tensor]
    case_ids: list[str]
    mirrored: torch.Tensor
    has_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, index: torch.Tensor | slice | None = None) -> dict[str, torch.Tensor]:
        """The targets of the cases at ``index`` (all when ``None``), as a loss batch."""
        idx = slice(None) if index is None else index
        return {k: v[idx] for k, v in self.targets.items()}


@dataclass
class StageResult:
    """What :func:`run_grading_stage` returns.

    Attributes:
        metrics: ``{"val": {...}, "test": {...}}``: :data:`~nxp2seg.models.metrics.GRADING_METRICS`
            and ``edema_kappa_quadratic_rater_vs_rater`` per split (only splits with graded cases).
        summary: plain facts of the stage for ``validation.json`` (counts, epochs, seconds).
        features: ``{"train", "val", "test"}`` :class:`CaseFeatures` (for inspection and tests).
        history: per-epoch ``train_loss``, ``val_loss`` and, when monitored, ``val_kappa``.
    """

    metrics: dict[str, dict[str, float]]
    summary: dict[str, Any]
    features: dict[str, CaseFeatures] = field(repr=False)
    history: dict[str, list[float]] = field(repr=False)


# ---------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------


@torch.no_grad()
def case_region_features(
    net: nn.Module,
    tap: FeatureTap,
    features: RegionFeatures,
    image: torch.Tensor,
    allowed_labels: torch.Tensor | None,
    region_membership: torch.Tensor,
    subcut_membership: torch.Tensor,
    canvas_size: Sequence[int] | None = None,
    size_divisor: Sequence[int] | None = None,
    segment: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Region feature vectors of whole volumes, as the bundle computes them at prediction.

    Without decoder features and with ``segment`` (the product's sliding-window
    inference, e.g. :meth:`~nxp2seg.models.segmenter.Segmenter.infer`), the region
    masks are the softmax of ``segment(image, allowed_labels)``: the segmentation
    ``nxp2seg.predict`` writes (:meth:`GradingNet.grade_probabilities`). Otherwise one
    whole-volume pass as :meth:`GradingNet.predict` (padded to the canvas).

    Args:
        net: the segmentation network (its weights are only read).
        tap: a :class:`FeatureTap` on ``net``.
        features: :class:`RegionFeatures` (fixed thresholds).
        image: ``(B, K, X, Y, Z)`` preprocessed volumes.
        allowed_labels: ``(B, C)`` bool (station masking) or ``None``.
        region_membership, subcut_membership: ``(B, R, C)``.
        canvas_size, size_divisor: the padding of :func:`pad_to_grid`.
        segment: sliding-window logits ``(image, allowed) -> (B, C, X, Y, Z)``.

    Returns:
        ``(B, R, F)`` float32, without gradient.
    """
    if segment is not None and not features.feature_channels:
        probs = torch.softmax(segment(image, allowed_labels).float(), dim=1)
        return features(probs, image, None, region_membership, subcut_membership).float()
    padded, _ = pad_to_grid(image, canvas_size, size_divisor)
    with tap.capture():
        out = network_logits(net, padded, allowed_labels)
    decoder = tap.take(padded.shape[2:])
    probs = torch.softmax(out["logits"].float(), dim=1)
    return features(probs, padded, decoder, region_membership, subcut_membership).float()


def _mirror_transform(datamodule: Any) -> Any | None:
    from nxp2seg.data.transforms import REGION_TARGET_KEYS, RandFlipSwapLRd

    prep = datamodule.preprocessing
    try:
        flip = RandFlipSwapLRd(
            keys=["image"],
            label_keys=[],
            schema=datamodule.schema,
            prob=1.0,
            region_keys=REGION_TARGET_KEYS,
            laterality_channel=len(prep.channels) if prep.laterality else None,
        )
    except ValueError as e:  # a schema whose sided labels have no twins
        log.warning("grading stage: no mirrored copies (%s)", e)
        return None
    flip.set_random_state(seed=0)
    return flip


def extract_features(
    net: nn.Module,
    features: RegionFeatures,
    items: Sequence[Mapping[str, Any]],
    datamodule: Any,
    canvas_size: Sequence[int] | None,
    size_divisor: Sequence[int] | None,
    mirror: bool = False,
    what: str = "",
    segment: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    perturb: float = 0.0,
    seed: int = 0,
) -> CaseFeatures:
    """Preprocess whole cases and extract their region features with the frozen network.

    Args:
        net: the segmentation network; put in eval mode for the pass and restored.
        features: :class:`RegionFeatures`.
        items: :meth:`CohortDataModule.grading_items` of one split.
        datamodule: the data module (preprocessing plan, schema, :meth:`has_mask`).
        canvas_size, size_divisor: the padding (as the bundle's :class:`GradingNet`).
        mirror: also extract each case mirrored left-right (targets swapped).
        what: a name for the log.
        segment: the product's sliding-window inference (:func:`case_region_features`).
        perturb: with ``segment``, the strength of the input perturbation while the
            cases with a mask are segmented (:func:`~nxp2seg.models.perturbation.perturb_image`;
            the features are read from the clean image); ``0``: none.
        seed: of the perturbations.
    """
    from nxp2seg.models.perturbation import perturb_image
    from monai import transforms as mt

    from nxp2seg.data.transforms import preprocess_transforms

    load = mt.Compose(preprocess_transforms(datamodule.preprocessing, with_label=False))
    flip = _mirror_transform(datamodule) if mirror else None
    dev = next(net.parameters()).device
    tap = FeatureTap(net)
    was_training = net.training
    net.eval()
    rows: list[dict[str, Any]] = []
    xs: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(int(seed))

    def perturbed(image: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        return segment(perturb_image(image.cpu(), perturb, gen).to(image.device), allowed)

    t0 = time.perf_counter()
    try:
        for i, item in enumerate(items):
            d = load({k: v for k, v in item.items() if k != "label"})
            versions = [(d, False)] + ([(flip(dict(d)), True)] if flip is not None else [])
            slots = {
                k: torch.as_tensor(item[k], device=dev)[None]
                for k in ("allowed_labels", "region_membership", "subcut_membership")
            }
            seen = bool(datamodule.has_mask(str(item["case_id"])))
            seg = perturbed if (segment is not None and perturb > 0 and seen) else segment
            for sample, mirrored in versions:
                image = _plain_tensor(sample["image"]).to(dev, torch.float32)[None]
                x = case_region_features(
                    net, tap, features, image, *slots.values(), canvas_size, size_divisor, seg
                )
                xs.append(x.cpu())
                rows.append(
                    {
                        **{k: np.asarray(sample[k], dtype=np.float32) for k in TARGET_KEYS},
                        "case_id": str(item["case_id"]),
                        "station_index": int(item["station_index"]),
                        "mirrored": mirrored,
                        "has_mask": bool(datamodule.has_mask(str(item["case_id"]))),
                    }
                )
            if (i + 1) % 10 == 0 or i + 1 == len(items):
                log.info(
                    "grading stage: %s features %d/%d cases (%.1f s)",
                    what,
                    i + 1,
                    len(items),
                    time.perf_counter() - t0,
                )
    finally:
        tap.remove()
        net.train(was_training)
    if not rows:
        raise ValueError(f"grading stage: no graded {what} case to extract")
    return CaseFeatures(
        x=torch.cat(xs),
        station_index=torch.as_tensor([r["station_index"] for r in rows]),
        targets={k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in TARGET_KEYS},
        case_ids=[r["case_id"] for r in rows],
        mirrored=torch.as_tensor([r["mirrored"] for r in rows]),
        has_mask=torch.as_tensor([r["has_mask"] for r in rows]),
    )


def _plain_tensor(x: Any) -> torch.Tensor:
    """A plain ``torch.Tensor`` (a ``MetaTensor`` would carry its metadata into every result)."""
    return torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x)


# ---------------------------------------------------------------------------
# the head
# ---------------------------------------------------------------------------


def _weighted_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    return sum(float(weights.get(k, 0.0)) * v for k, v in terms.items())


def head_rows(head: nn.Module, feats: CaseFeatures) -> dict[str, np.ndarray]:
    """The head's outputs on ``feats``, arranged for :func:`~.metrics.grading_metrics`."""
    was = head.training
    head.eval()
    with torch.no_grad():
        dev = next(head.parameters()).device
        out = head(feats.x.to(dev), feats.station_index.to(dev))
    head.train(was)
    t = feats.targets
    return {
        "edema": out["edema"].float().cpu().numpy(),
        "edema_target": t["edema_target"].numpy(),
        "fat": out["fat"].float().cpu().numpy(),
        "fat_target": t["fat_target"].numpy(),
        "fascial_prob": torch.sigmoid(out["fascial_logit"].float()).cpu().numpy(),
        "fascial_target": t["fascial_target"].numpy(),
        "subcut_prob": torch.sigmoid(out["subcut_logit"].float()).cpu().numpy(),
        "subcut_target": t["subcut_target"].numpy(),
        "pattern_prob": torch.softmax(out["pattern_logits"].float(), -1).cpu().numpy(),
        "pattern_index": t["pattern_index"].numpy(),
        "slot_valid": head.slot_valid[feats.station_index.to(head.slot_valid.device)].cpu().numpy(),
    }


def _loss_on(
    head: nn.Module,
    feats: CaseFeatures | None,
    weights: Mapping[str, float],
    regression: str,
    beta: float,
) -> float:
    if feats is None or not len(feats):
        return math.nan
    was = head.training
    head.eval()
    with torch.no_grad():
        dev = next(head.parameters()).device
        out = head(feats.x.to(dev), feats.station_index.to(dev))
        loss = _weighted_loss(grading_losses(out, feats.batch(), regression, beta), weights)
    head.train(was)
    return float(loss)


def fit_head(
    head: nn.Module,
    train: CaseFeatures,
    val: CaseFeatures | None,
    options: StageOptions,
    loss_weights: Mapping[str, float],
    regression: str = "smooth_l1",
    beta: float = 0.5,
    scale: Any = None,
) -> dict[str, Any]:
    """Train ``head`` (:class:`GradingHead`) on precomputed features; keep the best epoch's weights.

    A head with an ensemble trains its members one after the other
    (``head.active_member``), member ``i`` with seed ``options.seed + i``, each
    with its own kept epoch; then they grade together (averaged). Arguments and
    return value as :func:`_fit_member` (the first member's), plus ``members``:
    every member's result.
    """
    import dataclasses

    members = getattr(head, "members", None)
    n = len(members) if members is not None else 1
    results = []
    try:
        for i in range(n):
            if members is not None:
                head.active_member = i
            opts = dataclasses.replace(options, seed=int(options.seed) + i)
            results.append(_fit_member(head, train, val, opts, loss_weights, regression, beta, scale))
    finally:
        if members is not None:
            head.active_member = None
    head.eval()
    return {**results[0], "members": results}


def _fit_member(
    head: nn.Module,
    train: CaseFeatures,
    val: CaseFeatures | None,
    options: StageOptions,
    loss_weights: Mapping[str, float],
    regression: str = "smooth_l1",
    beta: float = 0.5,
    scale: Any = None,
) -> dict[str, Any]:
    """Train one member of ``head`` (all of it without an ensemble); keep the best epoch's weights.

    Args:
        head: the head (trained in place).
        train, val: features and targets (``val`` ``None``: the last epoch is kept).
        options: epochs, optimiser, batch size, monitor, patience, seed.
        loss_weights: weights of ``edema``, ``fat``, ``fascial``, ``subcutaneous``,
            ``pattern`` (``segmentation`` is ignored).
        regression, beta: of :func:`grading_losses`.
        scale: the edema scale (needed with ``monitor=edema_kappa_quadratic``).

    Returns:
        ``{"best_epoch", "epochs_run", "best_score", "history"}``; ``history`` holds
        ``train_loss``, ``val_loss`` (and ``val_kappa`` when monitored) per epoch.
    """
    from nxp2seg.models.metrics import grading_metrics

    if not len(train):
        raise ValueError(
            "grading stage: no graded training case; the head has nothing to learn from"
        )
    dev = next(head.parameters()).device
    x, st = train.x.to(dev), train.station_index.to(dev)
    targets = {k: v.to(dev) for k, v in train.targets.items()}
    n = len(train)
    bs = int(options.batch_size) or n
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    if options.monitor == "edema_kappa_quadratic":
        history["val_kappa"] = []
    best: tuple[tuple[float, float], int, dict[str, torch.Tensor]] | None = None
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(options.seed))
        opt = torch.optim.AdamW(
            [p for p in head.parameters() if p.requires_grad],
            lr=float(options.lr),
            weight_decay=float(options.weight_decay),
        )
        gen = torch.Generator().manual_seed(int(options.seed))
        epoch = -1
        for epoch in range(int(options.epochs)):
            head.train()
            order = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                out = head(x[idx], st[idx])
                batch = {k: v[idx] for k, v in targets.items()}
                loss = _weighted_loss(grading_losses(out, batch, regression, beta), loss_weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            history["train_loss"].append(total / n)
            val_loss = _loss_on(head, val, loss_weights, regression, beta)
            history["val_loss"].append(val_loss)
            loss_score = -val_loss if math.isfinite(val_loss) else -math.inf
            if options.monitor == "last":
                score = (float(epoch), 0.0)
            elif options.monitor == "val_loss":
                score = (loss_score, 0.0)
            else:
                kappa = (
                    grading_metrics(scale, **_squeeze(head_rows(head, val)))[options.monitor]
                    if val is not None and len(val)
                    else math.nan
                )
                history["val_kappa"].append(kappa)
                score = (kappa if math.isfinite(kappa) else -math.inf, loss_score)
            # without validation cases every epoch "improves": the last one is kept
            improved = best is None or (score >= best[0] if val is None else score > best[0])
            if improved:
                state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best = (score, epoch, state)
            elif options.patience and epoch - best[1] >= int(options.patience):
                break
    assert best is not None
    head.load_state_dict(best[2])
    head.eval()
    return {
        "best_epoch": int(best[1]),
        "epochs_run": int(epoch + 1),
        "best_score": (
            None
            if options.monitor == "last" or not math.isfinite(best[0][0])
            else (-best[0][0] if options.monitor == "val_loss" else best[0][0])
        ),
        "history": history,
    }


def fit_readouts(head: nn.Module, train: CaseFeatures, l2: float = 0.01, max_iter: int = 100) -> dict[str, Any]:
    """Fit the head's linear read-outs (fat grade, fascial and subcutaneous edema) as penalised GLMs.

    The read-outs' input is standardised with the training regions' feature
    means and SDs (``readout_mean``, ``readout_std`` of :class:`GradingHead`);
    then each read-out column is one convex-or-nearly problem solved by L-BFGS:

    * fat: least squares of ``max_fat * sigmoid(z w + b)`` to the readers'
      mean fat grade;
    * fascial, subcutaneous edema: logistic regression on the readers' call
      (present when more than half of them saw it, :func:`~nxp2seg.models.losses.readers_call`);

    each ``+ l2 * ||w||^2`` (the bias is not penalised), over the regions the
    readers graded. Deterministic: no seed, no mini-batches.

    Args:
        head: :class:`~nxp2seg.models.grading.GradingHead` (changed in place).
        train: the training features and targets.
        l2: the penalty.
        max_iter: L-BFGS iterations per read-out.

    Returns:
        ``{readout: {"n": regions, "loss": final penalised loss}}``.
    """
    import torch.nn.functional as F

    from nxp2seg.models.grading import READOUTS
    from nxp2seg.models.losses import readers_call

    dev = head.readout_mean.device
    x = train.x.to(dev).float().reshape(-1, train.x.shape[-1])
    mean, std = x.mean(dim=0), x.std(dim=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    with torch.no_grad():
        head.readout_mean.copy_(mean)
        head.readout_std.copy_(std)
    z = head.standardized(x).detach()
    t = train.targets
    targets = {
        "fat": t["fat_target"].to(dev).float().reshape(-1),
        "fascial": readers_call(t["fascial_target"].to(dev).float()).reshape(-1),
        "subcutaneous": readers_call(t["subcut_target"].to(dev).float()).reshape(-1),
    }
    report: dict[str, Any] = {}
    for k, name in enumerate(READOUTS):
        y = targets[name]
        keep = torch.isfinite(y)
        report[name] = {"n": int(keep.sum())}
        if not bool(keep.any()):
            continue  # nothing graded: the read-out keeps its initial weights
        zk, yk = z[keep], y[keep]
        w = torch.zeros(z.shape[1], device=dev, requires_grad=True)
        b = torch.zeros((), device=dev, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=int(max_iter), line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            o = zk @ w + b
            if name == "fat":
                loss = ((head.max_fat * torch.sigmoid(o) - yk) ** 2).mean()
            else:
                loss = F.binary_cross_entropy_with_logits(o, yk)
            loss = loss + float(l2) * (w * w).sum()
            loss.backward()
            return loss

        final = opt.step(closure)
        report[name]["loss"] = float(final.detach())
        with torch.no_grad():
            head.readout.weight[k].copy_(w.detach())
            head.readout.bias[k].copy_(b.detach())
    return report


def _squeeze(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rows["pattern_index"] = np.asarray(rows["pattern_index"]).reshape(-1)
    return rows


# ---------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------


def _perturbation(
    options: StageOptions, datamodule: Any, segment: Any, net: nn.Module, unseen_dice: float | None = None
) -> tuple[float, dict[str, Any]]:
    """The perturbation strength for the seen training cases, and what decided it."""
    if segment is None or options.perturb == 0:
        return 0.0, {"strength": 0.0, "mode": "off" if segment is not None else "no sliding-window inference"}
    if options.perturb != "auto":
        return float(options.perturb), {"strength": float(options.perturb), "mode": "fixed"}
    from monai import transforms as mt

    from nxp2seg.data.transforms import preprocess_transforms
    from nxp2seg.models.perturbation import calibrate_strength

    n = int(options.calibration_cases)
    seen = [i for i in datamodule.grading_items("train") if "label" in i][:n]
    unseen = [i for i in datamodule.grading_items("val") if "label" in i][:n]
    if not seen or not (unseen or unseen_dice is not None):
        return 0.0, {"strength": 0.0, "mode": "auto", "skipped": "needs training and validation cases with masks"}
    load = mt.Compose(preprocess_transforms(datamodule.preprocessing, with_label=True))
    schema = datamodule.schema

    def values_of(station: str) -> list[int]:
        return sorted(v for r in schema.region_names(station) for v in schema.regions[r].labels)

    was = net.training
    net.eval()
    try:
        strength, report = calibrate_strength(
            segment, seen, unseen, lambda it: load({k: it[k] for k in ("t1", "stir", "label")}),
            values_of, next(net.parameters()).device, seed=options.seed, target=unseen_dice,
        )
    finally:
        net.train(was)
    return strength, {**report, "mode": "auto"}


def run_grading_stage(
    net: nn.Module,
    grader: Grader,
    datamodule: Any,
    options: StageOptions,
    loss_weights: Mapping[str, float],
    regression: str = "smooth_l1",
    beta: float = 0.5,
    canvas_size: Sequence[int] | None = None,
    size_divisor: Sequence[int] | None = None,
    segment: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    unseen_dice: float | None = None,
) -> StageResult:
    """Extract frozen features, train ``grader.head`` on them, score validation and test.

    Args:
        net: the fitted segmentation network (best weights loaded); never changed.
        grader: :class:`Grader` with fixed thresholds (``learn_thresholds=False``);
            its head is trained in place.
        datamodule: the set-up :class:`~nxp2seg.data.datamodule.CohortDataModule`.
        options: :class:`StageOptions`.
        loss_weights, regression, beta: the grading losses (``model.grading_loss``).
        canvas_size, size_divisor: whole-volume padding; the bundle's :class:`GradingNet`
            pads with ``preprocessing.canvas_size or patch_size`` and the network's stride.
        segment: the sliding-window inference that ``nxp2seg.predict`` segments with;
            without decoder features the head then grades inside exactly that
            segmentation (:func:`case_region_features`).
        unseen_dice: the segmenter's Dice on the validation cases (``val/dice_mean``),
            the target of the perturbation's calibration (``None``: measured on them).

    Returns:
        :class:`StageResult`.
    """
    from nxp2seg.models.metrics import grading_metrics, rater_edema_kappa

    learnable = [n for n, p in grader.features.named_parameters() if p.requires_grad]
    if learnable:
        raise ValueError(
            f"grading stage: the region features have trainable {learnable}; features are "
            "precomputed, build the grader with learn_thresholds=false"
        )
    t0 = time.perf_counter()
    strength, perturbation = _perturbation(options, datamodule, segment, net, unseen_dice)
    t_calibrate = time.perf_counter() - t0
    feats: dict[str, CaseFeatures] = {}
    for split in ("train", "val", "test"):
        items = datamodule.grading_items(split)
        if not items:
            if split == "train":
                raise ValueError(
                    "grading stage: no graded training case (grades.csv); "
                    "the head has nothing to learn from"
                )
            continue
        feats[split] = extract_features(
            net,
            grader.features,
            items,
            datamodule,
            canvas_size,
            size_divisor,
            mirror=options.mirror and split == "train",
            what=split,
            segment=segment,
            perturb=strength if split == "train" else 0.0,
            seed=options.seed,
        )
    t_extract = time.perf_counter() - t0 - t_calibrate
    scale = datamodule.grade_scale
    readouts = fit_readouts(grader.head, feats["train"], options.readout_l2)
    frozen = list(grader.head.readout.parameters())
    for p in frozen:  # the MLP (edema, pattern) trains on the fitted read-outs
        p.requires_grad_(False)
    try:
        fit = fit_head(
            grader.head,
            feats["train"],
            feats.get("val"),
            options,
            loss_weights,
            regression,
            beta,
            scale,
        )
    finally:
        for p in frozen:
            p.requires_grad_(True)
    t_fit = time.perf_counter() - t0 - t_calibrate - t_extract
    grades = datamodule.cohort.grades
    metrics: dict[str, dict[str, float]] = {}
    for split, f in feats.items():
        if split == "train":
            continue
        m = grading_metrics(scale, **_squeeze(head_rows(grader.head, f)))
        m["edema_kappa_quadratic_rater_vs_rater"] = rater_edema_kappa(grades, scale, f.case_ids)
        m["grading_loss"] = _loss_on(grader.head, f, loss_weights, regression, beta)
        metrics[split] = {k: float(v) for k, v in m.items()}
    n_cases = {k: len(set(f.case_ids)) for k, f in feats.items()}
    n_passes = sum(len(f) for f in feats.values())
    train = feats["train"]
    summary = {
        "options": asdict(options),
        "n_cases": n_cases,
        "n_train_without_mask": len(
            {c for c, m in zip(train.case_ids, train.has_mask.tolist()) if not m}
        ),
        "n_train_mirrored": int(train.mirrored.sum()),
        "feature_size": int(grader.features.out_features),
        "best_epoch": fit["best_epoch"],
        "epochs_run": fit["epochs_run"],
        "readouts": readouts,
        "perturbation": perturbation,
        "ensemble": len(getattr(grader.head, "members", [None])),
        "monitor": options.monitor,
        "best_score": fit["best_score"],
        "seconds": {
            "calibrate": round(t_calibrate, 2),
            "extract": round(t_extract, 2),
            "fit": round(t_fit, 2),
            "per_case_pass": round(t_extract / max(1, n_passes), 3),
        },
        "n_feature_passes": n_passes,
    }
    log.info(
        "grading stage: %d cases (%d passes) in %.1f s, head %d epochs (best %d) in %.1f s",
        sum(n_cases.values()),
        n_passes,
        t_extract,
        fit["epochs_run"],
        fit["best_epoch"],
        t_fit,
    )
    return StageResult(metrics=metrics, summary=summary, features=feats, history=fit["history"])
