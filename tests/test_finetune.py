"""Fine-tuning: ``model.init_from=BUNDLE experiment=finetune``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_train

from nxp2seg.data.cohort import DatasetDescription
from nxp2seg.data.schema import default_compartment_schema, default_muscle_schema
from nxp2seg.io import make_nifti, save_nifti
from nxp2seg.models.bundle import load_bundle
from nxp2seg.models.finetune import FineTuneError, FineTuneStart


def _net_state(bundle) -> dict[str, torch.Tensor]:
    prefix = bundle.manifest["network"]["state_prefix"]
    return {k[len(prefix):]: v for k, v in bundle.state_dict.items() if k.startswith(prefix)}


@pytest.fixture
def muscle_cohort(synthetic_cohort, tmp_path) -> Path:
    """The synthetic cohort at muscle level: each compartment drawn as its first muscle; two
    training subjects, no validation rows, the test subject kept."""
    root = tmp_path / "muscles"
    shutil.copytree(synthetic_cohort, root)
    comp, mus = default_compartment_schema(), default_muscle_schema()
    lut = np.zeros(256, np.uint8)
    for name, region in comp.regions.items():
        lut[region.labels[0]] = mus.regions[name].labels[0]
    for name in ("subcutaneous_right", "subcutaneous_left", "bone"):
        lut[comp.labels[name]] = mus.labels[name]
    for f in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(f)
        save_nifti(make_nifti(lut[np.asarray(img.dataobj)], img.affine), f)
    d = DatasetDescription.load(root / "dataset.json")
    d.schema = mus
    d.save(root / "dataset.json")
    cases = pd.read_csv(root / "cases.csv")
    subjects = sorted(cases.subject_id.unique())
    keep = set(subjects[:2]) | set(cases.subject_id[cases.split == "test"])
    cases[cases.subject_id.isin(keep)].to_csv(root / "cases.csv", index=False)
    d.num_training = int(cases.subject_id.isin(keep).sum())
    d.save(root / "dataset.json")
    for f in (root / "imagesTr").glob("*.nii.gz"):
        if f.name.split("_")[0] not in keep:
            f.unlink()
    for f in (root / "labelsTr").glob("*.nii.gz"):
        if f.name.split("_")[0] not in keep:
            f.unlink()
    return root


def test_same_schema_starts_from_every_weight(trained_bundle):
    start = FineTuneStart.load(trained_bundle)
    schema = start.bundle.schema
    net, spec = start.build_network(schema.max_label + 1, schema)
    old = _net_state(start.bundle)
    for k, v in net.state_dict().items():
        assert torch.equal(v, old[k]), k
    assert spec["kwargs"] == start.bundle.manifest["network"]["kwargs"]


def test_changed_label_level_reinitialises_only_the_output_layer(trained_bundle):
    start = FineTuneStart.load(trained_bundle)
    schema = default_muscle_schema()
    net, spec = start.build_network(schema.max_label + 1, schema)
    old = _net_state(start.bundle)
    fresh = [k for k, v in net.state_dict().items() if not (v.shape == old[k].shape and torch.equal(v, old[k]))]
    kept = [k for k in net.state_dict() if k not in fresh]
    assert fresh and len(kept) > 3 * len(fresh)
    assert all(net.state_dict()[k].shape != old[k].shape for k in fresh if net.state_dict()[k].ndim > 1)
    assert spec["kwargs"]["out_channels"] == schema.max_label + 1
    out = net(torch.zeros(1, spec["kwargs"]["in_channels"], *spec["kwargs"]["patch_size"]))
    assert out.shape[1] == schema.max_label + 1


def _finetune(cohort: Path, bundle: Path, tmp_path: Path, *extra: str):
    from nxp2seg.train import train

    cfg = compose_train([
        f"data.cohort={cohort}", f"model.init_from={bundle}", "experiment=finetune",
        f"output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.root_dir={tmp_path}",
        "data.loader.verify_images=false", "trainer.max_steps=3", "data.sampling.num_samples=1",
        "callbacks.progress_bar.refresh_rate=0", *extra,
    ])
    return train(cfg)


def test_finetune_at_muscle_level_without_val_keeps_the_last_weights(trained_bundle, muscle_cohort, tmp_path):
    metrics, objects = _finetune(muscle_cohort, trained_bundle, tmp_path)
    assert objects["datamodule"].splits["val"] == []
    assert objects["validation"]["best_checkpoint"] is None and objects["trainer"].global_step == 3
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    new = load_bundle(objects["bundle_dir"])
    assert new.schema.level == "muscle"
    assert new.preprocessing == load_bundle(trained_bundle).preprocessing  # the bundle's, not re-planned
    assert "test" in new.validation and np.isfinite(new.validation["test"]["dice_mean"])
    assert new.config.init_from == str(trained_bundle)


def test_channels_that_differ_are_refused_with_a_clear_message(trained_bundle, synthetic_cohort, tmp_path):
    root = tmp_path / "dixon"
    shutil.copytree(synthetic_cohort, root)
    d = json.loads((root / "dataset.json").read_text())
    d["channel_names"] = {"0": "FAT", "1": "WATER"}
    (root / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(FineTuneError, match=r"\['T1', 'STIR'\].*\['FAT', 'WATER'\].*Dixon phantom"):
        _finetune(root, trained_bundle, tmp_path)
    with pytest.raises(FineTuneError, match="not a model bundle"):
        _finetune(synthetic_cohort, tmp_path, tmp_path)
