"""Faults: a training run killed mid-epoch and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_train

TESTS = Path(__file__).parent


def _base(cohort: Path, root: Path, out: str) -> list[str]:
    return [
        "experiment=smoke", f"data.cohort={cohort}", f"output_dir={root / out}",
        f"paths.cache_dir={root / 'cache'}", f"paths.root_dir={root}", "data.loader.verify=false",
        "grading=none", "trainer.max_epochs=24", "trainer.limit_train_batches=4",
        "trainer.check_val_every_n_epoch=24", "test=false", "validate_best=false",
    ]


@pytest.mark.slow
def test_training_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_run(synthetic_cohort, tmp_path):
    """SIGKILL in the middle of epoch 13 of 24; ``last.ckpt`` (end of epoch 12) resumes it.

    Tolerance: the final validation Dice within 0.03 of the uninterrupted run's and the
    same number of optimizer steps. (Resuming restores weights, optimizer, scheduler and
    loop; the patch sampler's random stream after the resume is not the uninterrupted one,
    so the last epochs see other patches.)
    """
    from nxp2seg.train import train

    full, full_obj = train(compose_train(_base(synthetic_cohort, tmp_path, "full")))
    total = full_obj["trainer"].global_step
    per_epoch = total // 24
    kill_at = 12 * per_epoch + max(1, per_epoch // 2)  # inside epoch 13
    assert kill_at % per_epoch != 0 or per_epoch == 1
    overrides = _base(synthetic_cohort, tmp_path, "killed")
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from conftest import compose_train\n"
        "from nxp2seg.train import train\n"
        "cfg = compose_train(%r + ['+callbacks.kill._target_=helpers_faults.KillAtStep', '+callbacks.kill.step=%d'])\n"
        "train(cfg)\n" % (str(TESTS), overrides, kill_at)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert last.exists() and not (tmp_path / "killed" / "bundle").exists()
    resumed, objects = train(compose_train([*_base(synthetic_cohort, tmp_path, "resumed"), f"ckpt_path={last}"]))
    assert objects["trainer"].global_step == total
    assert abs(resumed["val/dice_mean"] - full["val/dice_mean"]) < 0.03
    validation = json.loads((tmp_path / "resumed" / "bundle" / "validation.json").read_text())
    assert validation["val"]["dice_mean"] == pytest.approx(resumed["val/dice_mean"])
