"""Fitting the grading head on cached features: scikit-learn read-outs, a Lightning Trainer for the MLP.

The head (:class:`~nxp2seg.models.grading_head.GradingHead`) learns from
:class:`~nxp2seg.models.grading_features.CaseFeatures` (a few hundred regions)
in two steps, each with a maintained library:

1. :func:`fit_readouts` -- the linear read-outs, by scikit-learn's
   ``LogisticRegression`` on standardised features: the fascial and
   subcutaneous flags against the readers' call (present when more than half
   of them saw it), and the fat grade as a *fractional* logistic regression of
   ``fat / max_fat`` (each region twice, labelled 1 and 0 with weights ``y``
   and ``1 - y``: the quasi-binomial fit of a proportion). Each read-out reads
   the features a reader would look at for it (``grading.fit.readout_features``:
   the rim and the fat beside it for fascial edema, the subcutaneous sector for
   subcutaneous edema), and its L2 strength ``C`` is chosen by cross-validation
   over the training subjects (``readout_c: auto``). Deterministic.
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
import fnmatch
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from nxp2seg.grading import readers_flag
from nxp2seg.models.grading_features import CaseFeatures
from nxp2seg.models.grading_head import READOUTS, GradingHead
from nxp2seg.models.losses import masked_regression, soft_cross_entropy

__all__ = ["HeadModule", "cross_fit", "fit_head", "fit_mlp", "fit_readouts", "head_outputs", "readout_columns",
           "subject_folds"]

log = logging.getLogger(__name__)


def readout_columns(names: Sequence[str] | None, n_features: int, include: Sequence[str] | None,
                    exclude: Sequence[str] = ()) -> np.ndarray:
    """Bool mask of the features a read-out reads: names matching any ``include`` glob
    (``fnmatch``; ``None`` or empty: every feature) and none of ``exclude``.

    Without ``names`` (a caller that has none) every feature is read."""
    if names is None:
        return np.ones(n_features, dtype=bool)
    if len(names) != n_features:
        raise ValueError(f"read-out features: {len(names)} names for {n_features} features")
    keep = np.array([not include or any(fnmatch.fnmatchcase(n, g) for g in include) for n in names])
    keep &= np.array([not any(fnmatch.fnmatchcase(n, g) for g in exclude) for n in names])
    if not keep.any():
        raise ValueError(f"read-out features: no feature name matches {list(include or [])} "
                         f"outside {list(exclude)} (grading.fit.readout_features)")
    return keep


def _logistic(z: np.ndarray, y: np.ndarray, weight: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=float(c), max_iter=2000).fit(z, y, sample_weight=weight)


def _fractional(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A proportion ``y`` as the quasi-binomial fit sees it: each row as a 1 weighted ``y`` and a 0
    weighted ``1 - y``."""
    return np.vstack([z, z]), np.r_[np.ones(len(y)), np.zeros(len(y))], np.r_[y, 1 - y]


def _cv_score(name: str, z: np.ndarray, y: np.ndarray, fold: np.ndarray, c: float) -> float:
    """Out-of-fold score of one read-out at ``C = c``, pooled over the subject folds: ROC AUC for
    a flag, minus the fractional log-loss for fat (higher is better); NaN when it cannot be scored."""
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.full(len(y), np.nan)
    for f in np.unique(fold):
        rest, held = fold != f, fold == f
        if name == "fat":
            zz, yy, ww = _fractional(z[rest], y[rest])
        else:
            zz, yy, ww = z[rest], y[rest], np.ones(int(rest.sum()))
        if len(np.unique(yy[ww > 0])) < 2:
            continue
        p[held] = _logistic(zz, yy, ww, c).predict_proba(z[held])[:, 1]
    ok = np.isfinite(p)
    if name == "fat":
        return -float(log_loss(np.r_[np.ones(ok.sum()), np.zeros(ok.sum())], np.r_[p[ok], p[ok]],
                               sample_weight=np.r_[y[ok], 1 - y[ok]])) if ok.any() else float("nan")
    if len(np.unique(y[ok])) < 2:
        return float("nan")
    return float(roc_auc_score(y[ok], p[ok]))


def fit_readouts(head: GradingHead, train: CaseFeatures, c: float | str, *, grid: Sequence[float] = (0.1,),
                 features: Mapping[str, Sequence[str] | None] | None = None,
                 exclude: Mapping[str, Sequence[str] | None] | None = None,
                 names: Sequence[str] | None = None, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Fit the head's read-outs (fat, fascial, subcutaneous edema) in place with scikit-learn.

    The read-outs' input is standardised with the training regions' feature means
    and SDs (``readout_mean``, ``readout_std``); each read-out is an L2-penalised
    ``LogisticRegression`` over the regions the readers graded, on the features its
    ``features`` globs name (:func:`readout_columns`; the others get weight 0).

    Args:
        c: scikit-learn's ``C`` for every read-out, or ``"auto"``: each read-out takes the
            ``C`` of ``grid`` with the best out-of-fold score over ``folds`` folds of the
            training *subjects* (:func:`subject_folds`; ROC AUC against the readers' call for a
            flag, the fractional log-loss for fat), the middle of the grid when it cannot be
            scored (fewer than two subjects, or one class).
        features, exclude, names: per read-out the globs of the features it reads and of those
            it leaves out, and the feature names (``None``: every feature).

    Returns:
        ``{readout: {"n": regions, "positives": calls (flags), "C": chosen, "features": read,
        "cv": {C: score} (auto)}}``.
    """
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
    n_subjects = len(set(train.subject_ids))
    k = min(int(folds), n_subjects)
    fold = np.zeros(len(train), dtype=int)
    if c == "auto" and k >= 2:
        for f, held in enumerate(subject_folds(train.subject_ids, k, seed)):
            fold[held] = f
    fold = np.repeat(fold, train.x.shape[1])
    w = np.zeros((len(READOUTS), z.shape[1]))
    b = np.zeros(len(READOUTS))
    report: dict[str, Any] = {}
    for j, name in enumerate(READOUTS):
        cols = readout_columns(names, z.shape[1], (features or {}).get(name), (exclude or {}).get(name) or ())
        y = targets[name]
        keep = valid & np.isfinite(y)
        report[name] = {"n": int(keep.sum()), "features": int(cols.sum())}
        zk, yk = z[keep][:, cols], y[keep]
        if name != "fat":
            report[name]["positives"] = int(yk.sum())
        chosen = float(c) if c != "auto" else float(np.median(grid))
        if c == "auto" and k >= 2:
            scores = {float(g): _cv_score(name, zk, yk, fold[keep], g) for g in grid}
            report[name]["cv"] = scores
            finite = {g: s for g, s in scores.items() if np.isfinite(s)}
            if finite:
                chosen = max(finite, key=finite.get)
        report[name]["C"] = chosen
        zf, yf, weight = _fractional(zk, yk) if name == "fat" else (zk, yk, np.ones(len(yk)))
        if len(np.unique(yf[weight > 0])) < 2:  # nothing graded, or one class only: a constant
            p = float(np.clip(np.average(yf, weights=weight) if weight.sum() else 0.5, 1e-3, 1 - 1e-3))
            b[j] = np.log(p / (1 - p))
            continue
        lr = _logistic(zf, yf, weight, chosen)
        w[j, cols], b[j] = lr.coef_[0], lr.intercept_[0]
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
             accelerator: str = "cpu", names: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`fit_readouts` then :func:`fit_mlp`, in place (``names``: the feature names the
    read-outs' ``fit.readout_features`` globs match)."""
    readouts = fit_readouts(head, train, fit.readout_c, grid=fit.readout_c_grid, features=fit.readout_features,
                            exclude=fit.readout_exclude, names=names, folds=fit.folds or 5, seed=fit.seed)
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


def cross_fit(head: GradingHead, train: CaseFeatures, fit: Any, accelerator: str = "cpu",
              names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
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
        fit_head(fold_head, train.subset(rest), None, _no_early_stop(fit), accelerator, names)
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
