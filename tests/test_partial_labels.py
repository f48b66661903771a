"""Partial labels: ``dataset.json`` ``annotated``; unlisted structures are unknown, not background."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import compose_train

from nxp2seg.data.cohort import DatasetDescription
from nxp2seg.data.schema import SchemaError, default_compartment_schema
from nxp2seg.data.verify import verify_cohort
from nxp2seg.io import make_nifti, save_nifti
from nxp2seg.models.partial_labels import merge_unannotated

MUSCLES_ONLY = [n for n in default_compartment_schema().labels if n.startswith(("thigh_", "calf_"))]


def test_merge_moves_the_unannotated_mass_into_the_background_by_hand():
    p = torch.tensor([0.2, 0.5, 0.3])  # background, muscle, subcutaneous (unannotated)
    logits = torch.log(p).reshape(1, 3, 1, 1, 1)
    merged = torch.softmax(merge_unannotated(logits, [2]), dim=1).reshape(3)
    assert torch.allclose(merged, torch.tensor([0.5, 0.5, 0.0]), atol=1e-6)
    assert merge_unannotated(logits, []) is logits


def test_predicting_an_unannotated_structure_on_unlabelled_voxels_costs_nothing():
    from monai.losses import DiceCELoss

    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    label = torch.zeros(1, 1, 4, 4, 1)
    label[..., :2, :, :] = 1  # half muscle (1), half "0" (background or subcutaneous: unknown)
    says_subcut = torch.full((1, 3, 4, 4, 1), -5.0)
    says_subcut[:, 1][label[:, 0] == 1] = 5.0
    says_subcut[:, 2][label[:, 0] == 0] = 5.0  # subcutaneous where the mask says 0
    says_background = says_subcut[:, [0, 1, 2]].clone()
    says_background[:, [0, 2]] = says_subcut[:, [2, 0]]
    plain = loss(says_subcut, label)
    merged = loss(merge_unannotated(says_subcut, [2]), label)
    reference = loss(merge_unannotated(says_background, [2]), label)
    assert plain > 1.0 and merged < 0.05 and torch.isclose(merged, reference, atol=1e-3)
    wrong = says_subcut.clone()
    wrong[:, 2][label[:, 0] == 1] = 10.0  # subcutaneous inside the annotated muscle: still an error
    assert loss(merge_unannotated(wrong, [2]), label) > 0.5


def test_annotated_is_read_checked_and_written():
    d = DatasetDescription(annotated=["thigh_anterior_right"]).to_dict()
    back = DatasetDescription.from_dict(d)
    assert back.annotated == ["thigh_anterior_right"]
    assert 13 in back.unannotated_values() and 1 not in back.unannotated_values() and 0 not in back.unannotated_values()
    assert DatasetDescription().unannotated_values() == []
    with pytest.raises(SchemaError, match="psoas"):
        DatasetDescription.from_dict({**d, "annotated": ["psoas"]})
    with pytest.raises(SchemaError, match="list of label names"):
        DatasetDescription.from_dict({**d, "annotated": "thigh_anterior_right"})


@pytest.fixture
def muscles_only(synthetic_cohort, tmp_path) -> Path:
    """The synthetic phantom cohort with its subcutaneous and bone labels removed from every mask."""
    root = tmp_path / "muscles_only"
    shutil.copytree(synthetic_cohort, root)
    labels = default_compartment_schema().labels
    gone = [labels["subcutaneous_right"], labels["subcutaneous_left"], labels["bone"]]
    for f in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(f)
        data = np.asarray(img.dataobj).copy()
        data[np.isin(data, gone)] = 0
        save_nifti(make_nifti(data.astype(np.uint8), img.affine), f)
    d = json.loads((root / "dataset.json").read_text())
    d["annotated"] = MUSCLES_ONLY
    (root / "dataset.json").write_text(json.dumps(d, indent=2))
    return root


def test_cohort_without_subcutaneous_and_bone_labels_verifies_and_trains(muscles_only, tmp_path):
    from nxp2seg.train import train

    assert verify_cohort(muscles_only).ok
    cfg = compose_train([
        "experiment=smoke", f"data.cohort={muscles_only}", f"output_dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.root_dir={tmp_path}", "grading=none",
        "debug=fdr",
    ])
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["train/loss"])
    assert objects["model"].unannotated == [13, 14, 15]
    assert not any("subcutaneous" in k or "/bone" in k for k in metrics), sorted(metrics)
    assert any(k.startswith("val/dice/thigh_") for k in metrics)
