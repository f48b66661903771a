"""Fitting the grading head on cached features: scikit-learn read-outs, a Lightning Trainer for the MLP.

The head (:class:`~nxp2seg.models.grading_head.GradingHead`) learns from
:class:`~nxp2seg.models.grading_features.CaseFeatures` (a few hundred regions)
in two steps, each with a maintained library:

1. :func:`fit_readouts` -- the linear read-outs, by scikit-learn's
   ``LogisticRegression`` on standardised features: the fascial and
   subcutaneous flags against the readers' call (present when more than half
   of them saw it), and the fat grade as a *fractional* logistic regression of
   ``fat / max_fat`` (each region twice, labelled 1 and 0 with weights ``y``
   and ``1 - y``: the quasi-binomial fit of a proportion). Deterministic.
2. :func:`fit_mlp` -- the edema/pattern MLP (each ensemble member in turn) by a
   second Lightning ``Trainer`` on a ``TensorDataset`` of the features
   (:class:`HeadModule`: the masked SmoothL1 edema loss and the soft pattern
   cross-entropy; AdamW), a fixed schedule, or with ``patience`` early
   stopping on the validation loss and the best epoch's weights restored
   (``EarlyStopping``, ``ModelCheckpoint``).

:func:`cross_fit` repeats both on folds of the training subjects and returns
each case's out-of-fold outputs: what the operating points are chosen on.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from nxp2seg.grading import readers_flag
from nxp2seg.models.grading_features import CaseFeatures
from nxp2seg.models.grading_head import READOUTS, GradingHead
from nxp2seg.models.losses import masked_regression, soft_cross_entropy

__all__ = ["HeadModule", "cross_fit", "fit_head", "fit_mlp", "fit_readouts", "head_outputs", "subject_folds"]

log = logging.getLogger(__name__)


def fit_readouts(head: GradingHead, train: CaseFeatures, c: float) -> dict[str, Any]:
    """Fit the head's read-outs (fat, fascial, subcutaneous edema) in place with scikit-learn.

    The read-outs' input is standardised with the training regions' feature means
    and SDs (``readout_mean``, ``readout_std``); each read-out is an L2-penalised
    ``LogisticRegression`` (inverse strength ``c``) over the regions the readers graded.

    Returns:
        ``{readout: {"n": regions, "positives": calls (flags)}}``.
    """
    from sklearn.linear_model import LogisticRegression

    valid = head.valid(train.station_index).reshape(-1).numpy()
    x = train.x.reshape(-1, train.x.shape[-1]).double().numpy()
    mean = x[valid].mean(axis=0)
    std = x[valid].std(axis=0, ddof=1) if valid.sum() > 1 else np.ones_like(mean)
    std = np.where(std > 1e-6, std, 1.0)
    z = (x - mean) / std
    t = train.targets
    targets = {
        "fat": t["fat_target"].reshape(-1).double().numpy() / head.max_fat,
        "fascial": readers_flag(t["fascial_target"].reshape(-1).double().numpy()),
        "subcutaneous": readers_flag(t["subcut_target"].reshape(-1).double().numpy()),
    }
    w = np.zeros((len(READOUTS), z.shape[1]))
    b = np.zeros(len(READOUTS))
    report: dict[str, Any] = {}
    for k, name in enumerate(READOUTS):
        y = targets[name]
        keep = valid & np.isfinite(y)
        report[name] = {"n": int(keep.sum())}
        zk, yk = z[keep], y[keep]
        if name == "fat":  # fractional response: each region as a weighted 1 and a weighted 0
            zk, yk, weight = np.vstack([zk, zk]), np.r_[np.ones(len(yk)), np.zeros(len(yk))], np.r_[yk, 1 - yk]
        else:
            weight = np.ones(len(yk))
            report[name]["positives"] = int(yk.sum())
        if len(np.unique(yk[weight > 0])) < 2:  # nothing graded, or one class only: a constant
            p = float(np.clip(np.average(yk, weights=weight) if weight.sum() else 0.5, 1e-3, 1 - 1e-3))
            b[k] = np.log(p / (1 - p))
            continue
        lr = LogisticRegression(C=float(c), max_iter=2000).fit(zk, yk, sample_weight=weight)
        w[k], b[k] = lr.coef_[0], lr.intercept_[0]
    with torch.no_grad():
        head.readout_mean.copy_(torch.as_tensor(mean))
        head.readout_std.copy_(torch.as_tensor(std))
        head.readout.weight.copy_(torch.as_tensor(w))
        head.readout.bias.copy_(torch.as_tensor(b))
    return report


class HeadModule(pl.LightningModule):
    """One member of the head's edema/pattern MLP, trained by Lightning on cached features.

    Batches are ``(x, station_index, edema_target, pattern_target)`` rows of a
    ``TensorDataset``; the loss is ``weights.edema * masked regression + weights.pattern *
    soft cross-entropy`` (NaN targets are not graded: masked out). The read-outs are frozen.
    """

    def __init__(self, head: GradingHead, member: int, lr: float, weight_decay: float,
                 weights: Mapping[str, float], regression: str, beta: float):
        super().__init__()
        self.head, self.member = head, int(member)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.weights, self.regression, self.beta = dict(weights), regression, float(beta)

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, station, edema, pattern = batch
        self.head.active_member = self.member
        try:
            out = self.head(x, station)
        finally:
            self.head.active_member = None
        loss = self.weights.get("edema", 1.0) * masked_regression(out["edema"], edema, self.regression, self.beta)
        return loss + self.weights.get("pattern", 0.0) * soft_cross_entropy(out["pattern_logits"], pattern)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), on_epoch=True, batch_size=batch[0].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.head.members[self.member].parameters())
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def _dataset(f: CaseFeatures) -> TensorDataset:
    t = f.targets
    return TensorDataset(f.x.float(), f.station_index.long(), t["edema_target"].float(), t["pattern_target"].float())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's per-fit banners (devices, tips) and its no-validation warning, silenced:
    the head is fitted dozens of times (members x folds)."""
    names = ("pytorch_lightning", "lightning_fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(val_dataloader|num_workers|does not have many workers|LeafSpec).*")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def fit_mlp(head: GradingHead, train: CaseFeatures, val: CaseFeatures | None, fit: Any,
            accelerator: str = "cpu") -> dict[str, Any]:
    """Train every member of the head's MLP in place (member ``i`` with seed ``fit.seed + i``).

    Args:
        head: the head (read-outs already fitted; they stay frozen).
        train, val: cached features (``val`` for early stopping with ``fit.patience``).
        fit: :class:`~nxp2seg.models.grading_spec.FitSpec`.
        accelerator: Lightning's (``cpu``, ``gpu``).

    Returns:
        ``{"epochs": [per member: epochs run], "best_epoch": [...]}``.
    """
    if not len(train):
        raise ValueError("grading stage: no graded training case; the head has nothing to learn from")
    n = len(train)
    bs = int(fit.batch_size) or n
    early = int(fit.patience) > 0 and val is not None and len(val) > 0
    epochs, best = [], []
    for p in head.readout.parameters():
        p.requires_grad_(False)
    try:
        for i in range(len(head.members)):
            pl.seed_everything(int(fit.seed) + i, workers=False, verbose=False)
            module = HeadModule(head, i, fit.lr, fit.weight_decay, fit.loss_weights, fit.regression, fit.beta)
            gen = torch.Generator().manual_seed(int(fit.seed) + i)
            train_loader = DataLoader(_dataset(train), batch_size=bs, shuffle=True, generator=gen)
            val_loader = DataLoader(_dataset(val), batch_size=max(1, len(val))) if early else None
            with tempfile.TemporaryDirectory(prefix="nxp2seg-head-") as tmp, _quiet():
                callbacks: list[pl.Callback] = []
                if early:
                    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp, monitor="val/loss", mode="min",
                                                        save_top_k=1, save_weights_only=True)
                    callbacks = [ckpt, pl.callbacks.EarlyStopping("val/loss", patience=int(fit.patience))]
                trainer = pl.Trainer(
                    max_epochs=int(fit.epochs), accelerator=accelerator, devices=1, logger=False,
                    callbacks=callbacks, enable_checkpointing=early, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
                    limit_val_batches=1.0 if early else 0,
                )
                trainer.fit(module, train_loader, val_loader)
                epochs.append(int(trainer.current_epoch))
                if early and ckpt.best_model_path:
                    state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
                    module.load_state_dict(state)
                    best.append(int(str(ckpt.best_model_path).split("epoch=")[1].split("-")[0]))
                else:
                    best.append(int(trainer.current_epoch) - 1)
    finally:
        for p in head.readout.parameters():
            p.requires_grad_(True)
    head.eval()
    return {"epochs": epochs, "best_epoch": best}


def fit_head(head: GradingHead, train: CaseFeatures, val: CaseFeatures | None, fit: Any,
             accelerator: str = "cpu") -> dict[str, Any]:
    """:func:`fit_readouts` then :func:`fit_mlp`, in place."""
    readouts = fit_readouts(head, train, fit.readout_c)
    return {"readouts": readouts, **fit_mlp(head, train, val, fit, accelerator)}


@torch.no_grad()
def head_outputs(head: GradingHead, feats: CaseFeatures) -> dict[str, torch.Tensor]:
    """The head's outputs on ``feats`` (eval mode)."""
    was = head.training
    head.eval()
    dev = head.readout_mean.device
    out = head(feats.x.to(dev), feats.station_index.to(dev))
    head.train(was)
    return {k: v.cpu() for k, v in out.items()}


def subject_folds(subject_ids: list[str], k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` folds of case indices, whole subjects per fold (a seeded shuffle of the subjects)."""
    subjects = sorted(set(subject_ids))
    order = np.random.default_rng(seed).permutation(len(subjects))
    fold_of = {subjects[j]: i % k for i, j in enumerate(order)}
    return [np.flatnonzero([fold_of[s] == f for s in subject_ids]) for f in range(k)]


def cross_fit(head: GradingHead, train: CaseFeatures, fit: Any, accelerator: str = "cpu") -> dict[str, torch.Tensor]:
    """Out-of-fold head outputs on the training cases (``fit.folds`` folds by subject).

    A fresh copy of ``head`` (untrained, as given) is fitted on each fold's other
    subjects (:func:`fit_head`, without early stopping) and predicts that fold.

    Returns:
        :data:`~nxp2seg.models.grading_head.GRADING_OUTPUTS` ``(N, ...)`` in ``train``'s order.
    """
    folds = subject_folds(train.subject_ids, int(fit.folds), int(fit.seed))
    out: dict[str, torch.Tensor] = {}
    for f, held in enumerate(folds):
        if not len(held):
            continue
        rest = np.setdiff1d(np.arange(len(train)), held)
        fold_head = copy.deepcopy(head)
        fit_head(fold_head, train.subset(rest), None, _no_early_stop(fit), accelerator)
        pred = head_outputs(fold_head, train.subset(held))
        for k, v in pred.items():
            if k not in out:
                out[k] = torch.zeros((len(train), *v.shape[1:]), dtype=v.dtype)
            out[k][torch.as_tensor(held)] = v
        log.info("grading stage: cross-fitting fold %d/%d", f + 1, len(folds))
    return out


def _no_early_stop(fit: Any) -> Any:
    import dataclasses

    return dataclasses.replace(fit, patience=0) if dataclasses.is_dataclass(fit) else fit
