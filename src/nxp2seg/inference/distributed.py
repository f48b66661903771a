"""Multi-device prediction with Lightning: each rank predicts and writes its own cases.

``python -m nxp2seg.predict ... devices=N [strategy=ddp] [accelerator=gpu|cpu]``.
Lightning launches the ranks and shards the case list with its unrepeated
distributed sampler for prediction (no case runs twice); every rank calls the
same :func:`~nxp2seg.inference.batch.predict_one` as a single process, so the
files are the same. After a barrier the reports are read back from disk and
rank 0 writes the tables (:func:`~nxp2seg.inference.batch.is_main_process`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from nxp2seg.inference.batch import predict_one
from nxp2seg.inference.writers import case_dir, read_report

__all__ = ["lightning_predict_fn"]


def lightning_predict_fn(out: Path, *, devices: int, strategy: str, accelerator: str, qc: bool,
                         dicom_seg: bool, model_info: dict[str, Any]) -> Callable[..., list[dict[str, Any]]]:
    """A ``predict_fn`` for :func:`~nxp2seg.inference.batch.run_batch` running on ``devices`` ranks."""

    def run(predictor: Any, cases: Sequence[Any]) -> list[dict[str, Any]]:
        class _CasePredictor(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

            def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
                predictor.device = self.device
                predictor.model.to(self.device)
                predictor.segmenter.to(self.device)
                rep = predict_one(predictor, batch, out, qc=qc, dicom_seg=dicom_seg, model_info=model_info)
                return {"case_id": rep["case_id"], "status": rep["status"]}

        loader = DataLoader(list(cases), batch_size=1, shuffle=False, collate_fn=lambda b: b[0])
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.predict(_CasePredictor(), dataloaders=loader, return_predictions=False)
        trainer.strategy.barrier()
        reports = []
        for c in cases:
            rep = read_report(case_dir(out, c.case_id) / "report.json")
            reports.append(rep or {"case_id": c.case_id, "status": "failed",
                                   "error": "no report was written for this case (a rank stopped?)"})
        return reports

    return run
