"""Perturbing the segmenter's input for the cases it trained on, calibrated on the unseen ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nxp2seg.models.perturbation import calibrate_strength, perturb_image, region_dice


def test_perturb_image_leaves_laterality_and_is_seeded():
    image = torch.randn(2, 3, 8, 8, 4)
    a = perturb_image(image, 2.0, torch.Generator().manual_seed(1))
    b = perturb_image(image, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a[:, :2], image[:, :2])
    assert torch.equal(a[:, 2], image[:, 2])  # the laterality channel is geometry, not intensity
    assert perturb_image(image, 0.0, torch.Generator()) is image
    # noise SD 0.15 s on a constant image
    flat = perturb_image(torch.zeros(1, 2, 64, 64, 8), 2.0, torch.Generator().manual_seed(0))
    assert float(flat.std()) == pytest.approx(0.3, rel=0.05)


def test_region_dice_by_hand():
    truth = torch.tensor([[[1], [1], [2], [0]]])
    pred = torch.tensor([[[1], [2], [2], [0]]])
    # label 1: 2*1/(1+2) ; label 2: 2*1/(2+1) ; label 3 absent from both: left out
    assert region_dice(pred, truth, [1, 2, 3]) == pytest.approx({1: 2 / 3, 2: 2 / 3})


def test_calibration_finds_the_strength_where_seen_cases_segment_like_unseen_ones():
    """A thresholding 'segmenter': more input noise, more flipped voxels, lower Dice."""
    g = torch.Generator().manual_seed(0)

    def item(noise):
        clean = torch.where(torch.rand(1, 1, 24, 24, 6, generator=g) > 0.5, 1.0, -1.0)
        image = torch.cat([clean, clean + noise * torch.randn(clean.shape, generator=g)], dim=1)
        return {"image": image[0].numpy(), "label": (clean[0] > 0).float().numpy(),
                "allowed_labels": np.ones(2, bool), "station": "thigh"}

    def segment(image, allowed):
        fg = (image[:, 1] > 0).float()
        return torch.stack([1 - fg, fg], dim=1)

    seen = [item(0.0) for _ in range(3)]  # segmented perfectly: "trained on"
    unseen = [item(0.6) for _ in range(3)]
    strength, report = calibrate_strength(segment, seen, unseen, lambda it: it, lambda st: [1], torch.device("cpu"))
    curve = {float(k): v for k, v in report["seen_dice"].items()}
    assert curve[0.0] == pytest.approx(1.0) and all(curve[a] >= curve[b] for a, b in zip(sorted(curve), sorted(curve)[1:]))
    lo = max(s for s, d in curve.items() if d > report["unseen_dice"])
    hi = min(s for s, d in curve.items() if d <= report["unseen_dice"])
    assert lo < strength <= hi
    # a known target (e.g. the fit's val/dice_mean) is used as it is
    _, given = calibrate_strength(segment, seen, [], lambda it: it, lambda st: [1], torch.device("cpu"), target=0.9)
    assert given["unseen_dice"] == 0.9
    # nothing to correct when the seen cases are no better than the unseen ones
    none, _ = calibrate_strength(segment, unseen, seen, lambda it: it, lambda st: [1], torch.device("cpu"))
    assert none == 0.0


def test_calibration_loads_each_case_once_and_stops_at_the_crossing():
    loads = []

    def load(item):
        loads.append(item["id"])
        return item

    def segment(image, allowed):  # Dice falls with strength: the noise flips voxels
        fg = (image[:, 1] > 0).float()
        return torch.stack([1 - fg, fg], dim=1)

    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(4):
        clean = torch.where(torch.rand(1, 1, 24, 24, 6, generator=g) > 0.5, 1.0, -1.0)
        items.append({"id": i, "image": torch.cat([clean, clean], 1)[0].numpy(),
                      "label": (clean[0] > 0).float().numpy(), "allowed_labels": np.ones(2, bool),
                      "station": "thigh"})
    strengths = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    full = {s: calibrate_strength(segment, items, [], load, lambda st: [1], torch.device("cpu"),
                                  strengths=(0.0, s), target=0.0)[1]["seen_dice"][f"{s:g}"] for s in strengths[1:]}
    target = (full[1.0] + full[2.0]) / 2  # crossed between strengths 1 and 2
    loads.clear()
    strength, report = calibrate_strength(segment, items, [], load, lambda st: [1], torch.device("cpu"),
                                          strengths=strengths, target=target)
    assert sorted(loads) == [0, 1, 2, 3]  # preprocessed once, not once per strength
    assert list(report["seen_dice"]) == ["0", "1", "2"]  # 3, 4, 5 would not change the result
    assert 1.0 < strength < 2.0
