"""A callback that kills its own process (SIGKILL: no cleanup, like a crash or an OOM kill)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILL the process once ``trainer.global_step`` reaches ``step`` (mid-epoch if not a multiple)."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
