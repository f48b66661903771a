"""Lightning DDP on two CPU processes (gloo): train, then predict; the same predictions as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.slow
def test_ddp_training_and_prediction_on_two_cpu_processes(synthetic_cohort, tmp_path):
    out = tmp_path / "run"
    train = _run(["nxp2seg.train", "experiment=smoke", f"data.cohort={synthetic_cohort}",
                  f"output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.root_dir={tmp_path}",
                  "data.loader.verify=false", "grading=none", "trainer=ddp", "trainer.accelerator=cpu",
                  "trainer.devices=2", "trainer.precision=32", "trainer.benchmark=false"], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in train.stdout + train.stderr  # two processes trained
    bundle = out / "bundle"
    assert (bundle / "weights.safetensors").exists()
    common = ["nxp2seg.predict", f"model={bundle}", f"input={synthetic_cohort}", "progress=false",
              "num_threads=1"]
    one = _run([*common, f"output={tmp_path / 'one'}"], tmp_path)
    two = _run([*common, f"output={tmp_path / 'two'}", "accelerator=cpu", "devices=2", "strategy=ddp"],
               tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    cases = pd.read_csv(tmp_path / "one" / "cases.csv")["case_id"].tolist()
    assert len(cases) == 8
    for cid in cases:
        a = (tmp_path / "one" / cid / "seg.nii.gz").read_bytes()
        assert a == (tmp_path / "two" / cid / "seg.nii.gz").read_bytes(), cid
    r1 = pd.read_csv(tmp_path / "one" / "regions.csv").drop(columns=["edema_fraction"])
    r2 = pd.read_csv(tmp_path / "two" / "regions.csv").drop(columns=["edema_fraction"])
    pd.testing.assert_frame_equal(r1, r2)
