"""One home for right and left (nxp2seg.data.sides), and every consumer held to it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nxp2seg.data.schema import LabelSchema, Region, default_compartment_schema, default_muscle_schema
from nxp2seg.data.sides import (
    label_sides,
    lr_swap_lut,
    orientation_lr_axis,
    region_twins,
    side_lut,
)
from nxp2seg.evaluation.segmentation import case_segmentation
from nxp2seg.inference.writers import label_colors
from nxp2seg.models.segmenter import Segmenter
from nxp2seg.stats.segmentation import dice, lr_swaps

SRC = Path(__file__).resolve().parents[1] / "src" / "nxp2seg"


def _nameless_schema() -> LabelSchema:
    """A schema whose label names say nothing about sides: only the regions do."""
    labels = {"background": 0, "ant_a": 1, "ant_b": 2, "med_a": 3, "med_b": 4, "post_a": 5,
              "post_b": 6, "fat_x": 7, "fat_y": 8}
    regions = {}
    for comp, (r, l) in {"anterior": (1, 2), "medial": (3, 4), "posterior": (5, 6)}.items():
        regions[f"thigh_{comp}_right"] = Region(f"thigh_{comp}_right", "thigh", comp, "right", (r,))
        regions[f"thigh_{comp}_left"] = Region(f"thigh_{comp}_left", "thigh", comp, "left", (l,))
    for comp, (r, l) in {"anterior": (1, 2), "lateral": (3, 4), "posterior": (5, 6)}.items():
        regions[f"calf_{comp}_right"] = Region(f"calf_{comp}_right", "calf", comp, "right", (r,))
        regions[f"calf_{comp}_left"] = Region(f"calf_{comp}_left", "calf", comp, "left", (l,))
    return LabelSchema(labels=labels, regions=regions)


def test_sides_of_the_default_schemas_match_their_regions_and_structures():
    for schema in (default_compartment_schema(), default_muscle_schema()):
        sides = label_sides(schema)
        for region in schema.regions.values():
            assert all(sides[v] == region.side for v in region.labels)
        assert sides[schema.labels["subcutaneous_right"]] == "right"
        assert sides[schema.labels["subcutaneous_left"]] == "left"
        assert schema.labels["bone"] not in sides and 0 not in sides
        lut = side_lut(schema)
        assert lut[schema.labels["thigh_anterior_right" if schema.level == "compartment"
                               else "rectus_femoris_right"]] == 1
        assert lut[schema.labels["bone"]] == 0


def test_sides_come_from_the_regions_not_from_label_names():
    s = _nameless_schema()
    assert label_sides(s) == {1: "right", 2: "left", 3: "right", 4: "left", 5: "right", 6: "left"}
    lut = lr_swap_lut(s)
    assert lut.tolist() == [0, 2, 1, 4, 3, 6, 5, 7, 8]
    assert (lut[lut] == np.arange(len(lut))).all()


def test_a_region_without_a_twin_cannot_be_mirrored():
    s = _nameless_schema()
    regions = {n: r for n, r in s.regions.items() if n != "calf_lateral_left"}
    with pytest.raises(ValueError, match="calf_lateral_right.*no left twin.*flip_lr_prob=0"):
        lr_swap_lut(LabelSchema(labels=s.labels, regions=regions))


def test_muscle_schema_twins_pair_muscle_by_muscle():
    s = default_muscle_schema()
    lut = lr_swap_lut(s)
    assert s.name_of(lut[s.labels["vastus_medialis_right"]]) == "vastus_medialis_left"
    assert s.name_of(lut[s.labels["subcutaneous_left"]]) == "subcutaneous_right"


@pytest.mark.parametrize(("codes", "axis"), [("RAS", 0), ("LPS", 0), ("PLS", 1), ("SPR", 2)])
def test_orientation_lr_axis(codes, axis):
    assert orientation_lr_axis(codes) == axis


def test_orientation_lr_axis_refuses_codes_without_one_lr_axis():
    with pytest.raises(ValueError, match="one of them L or R"):
        orientation_lr_axis("PAS")


def test_lr_swaps_by_hand_with_schema_sides():
    s = _nameless_schema()
    truth = np.array([1, 1, 1, 2, 2, 0])
    pred = np.array([2, 2, 1, 2, 2, 0])  # 2 of 3 voxels of the right region called left
    regions = {n: r.labels for n, r in s.regions.items() if r.station == "thigh"}
    out = lr_swaps(pred, truth, side_lut(s), regions)
    assert out == {"thigh_anterior_right": True, "thigh_anterior_left": False}


def test_evaluate_and_training_count_the_same_swaps():
    """evaluate (numpy, per case) and validation (Segmenter) apply one rule."""
    schema = default_compartment_schema()
    rng = np.random.default_rng(0)
    truth = rng.choice([0, 1, 2, 3, 4, 5, 6, 13, 14, 15], size=(12, 10, 4))
    pred = truth.copy()
    pred[truth == 1] = 4  # thigh anterior right -> left: swapped
    pred[truth == 13] = 14  # subcutaneous right -> left (not a graded region)
    rows = case_segmentation(pred, truth, "thigh", (1.0, 1.0, 1.0), with_hd95=False)
    graded_swaps = sum(r["lr_swap"] for r in rows)
    assert graded_swaps == 1
    region_labels = {n: list(r.labels) for n, r in schema.regions.items() if r.station == "thigh"}
    seg = Segmenter(net=nn.Identity(), loss=nn.Identity(), optimizer=torch.optim.SGD,
                    region_labels=region_labels, side_lut=side_lut(schema).tolist())
    t = torch.as_tensor(truth)[None, None]
    p = torch.as_tensor(pred)[None, None]
    assert seg._count_lr_swaps(p, t).tolist() == [[float(graded_swaps)]]


def test_flip_tta_mirrors_the_left_right_axis_of_the_orientation():
    """A volume reoriented to PLS runs left-right along axis 1: the mirrored pass flips that axis."""

    class Probe(nn.Module):
        seen: list = []

        def forward(self, x):
            self.seen.append(x.clone())
            return x[:, :2]

    image = torch.arange(2 * 4 * 6 * 2, dtype=torch.float32).reshape(1, 2, 4, 6, 2)
    for axis in (0, 1, 2):
        probe = Probe()
        probe.seen = []
        seg = Segmenter(net=probe, loss=nn.Identity(), optimizer=torch.optim.SGD,
                        patch_size=(4, 6, 2), lr_permutation=[1, 0], lr_axis=axis)
        mirrored = seg._mirrored(lambda v: seg(v)["logits"], image, [1, 0])
        assert torch.equal(probe.seen[-1], torch.flip(image, dims=(2 + axis,)))
        assert torch.equal(mirrored, image[:, [1, 0]])  # flipped back, channels swapped back


def test_label_colours_darken_the_left_side_by_the_schema():
    s = _nameless_schema()
    colors = label_colors(s)
    assert colors[2] == tuple(int(c * 0.65) for c in colors[1])  # ant_b is the left anterior


def test_dice_matches_monai_on_masks_with_a_truth():
    from monai.metrics import compute_dice

    rng = np.random.default_rng(1)
    for _ in range(5):
        p, t = rng.random((6, 5, 3)) > 0.5, rng.random((6, 5, 3)) > 0.6
        ref = compute_dice(torch.as_tensor(p)[None, None].float(), torch.as_tensor(t)[None, None].float(),
                           include_background=True)
        assert dice(p, t) == pytest.approx(float(ref), abs=1e-6)
    assert dice(np.array([1, 1, 0]), np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


_SUFFIX = re.compile(r"""(endswith|removesuffix)\(\s*\(?\s*["']_(right|left)["']|["']_(right|left)["']\s*\)""")


def test_no_module_reads_sides_from_label_name_suffixes():
    """Sides come from nxp2seg.data.sides; no code parses ``_right``/``_left`` out of names."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _SUFFIX.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not offenders, "side parsed from a label name:\n" + "\n".join(offenders)


def test_predict_scores_a_case_by_the_grading_rules():
    """predict's case row: integer grades, station score, asymmetry and fat grade as the rules give them."""
    from nxp2seg.data.schema import FAT_SCALE, get_grade_scale
    from nxp2seg.grading.rules import asymmetry, integer_grade, station_score
    from nxp2seg.inference.inputs import CaseInput
    from nxp2seg.inference.predictor import Predictor

    schema, scale = default_compartment_schema(), get_grade_scale("beltrame6")
    pred = Predictor.__new__(Predictor)  # the table rows need only the schema and scale
    pred.schema, pred.scale = schema, scale
    names = schema.region_names("thigh")
    edema = np.array([2.4, 0.6, 4.5, 1.49, 0.2, 3.0], np.float32)
    fat = np.array([0.49, 1.5, 3.7, 4.6, -0.2, 2.0], np.float32)
    # the grader's calls at its default operating points (rounding half up, flags at 0.5, argmax)
    import torch

    from nxp2seg.models.grading import build_grader
    from nxp2seg.models.grading_spec import GraderSpec

    grader = build_grader(GraderSpec().to_dict(), 0, [1.0, 1.0, 1.0], scale.max_grade)
    out = {"edema": torch.as_tensor(edema)[None], "fat": torch.as_tensor(fat)[None],
           "fascial_logit": torch.logit(torch.full((1, 6), 0.7)), "subcut_logit": torch.logit(torch.full((1, 6), 0.2)),
           "pattern_logits": torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1]]))}
    grades = {k: v[0].float().numpy() for k, v in grader.calls(out, torch.tensor([0])).items()}
    labels = np.zeros((4, 4, 4), np.int16)
    case = CaseInput(case_id="c1", subject_id="s1", station="thigh", source="nifti", t1=None, stir=None)
    rows, row = pred._tables(case, "thigh", "given", labels, np.zeros(labels.shape, bool), 0.001, grades)
    ints = integer_grade(edema.astype(float), scale)
    assert [r["edema_grade_int"] for r in rows] == [2, 1, 5, 1, 0, 3] == list(ints)  # halves round up
    assert [r["fat_grade"] for r in rows] == list(FAT_SCALE.to_int(fat.astype(float))) == [0, 2, 4, 4, 0, 2]
    assert row["station_score"] == station_score(ints) == 12
    assert row["station_score_continuous"] == pytest.approx(float(edema.astype(float).sum()))
    by_hand = asymmetry(ints, [schema.regions[n] for n in names])
    assert row["asymmetry"] == by_hand["asymmetry"] == (2 + 1 + 5) - (1 + 0 + 3)
    assert row["asymmetry_medial"] == 1 - 0 and "asymmetry_lateral" not in row
    assert row["pattern"] == "patchy" and rows[0]["fascial_edema"] is True


_HAND_SUM = re.compile(r"(ints|grades?|edema\w*)\.sum\(|np\.floor\([^)]*\+ 0\.5")


def test_predict_does_not_re_derive_the_scores():
    """No hand sum of grades, no re-typed rounding outside grading/ and the schema."""
    offenders = []
    for path in (SRC / "inference").rglob("*.py"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _HAND_SUM.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_twins_of_a_schema_with_one_region_per_muscle():
    """Several regions per compartment and side pair by their position among them."""
    m = default_muscle_schema()
    regions = {}
    for r in m.regions.values():
        for v in r.labels:
            name = m.name_of(v)
            regions[f"{r.station}_{name}"] = Region(f"{r.station}_{name}", r.station, r.compartment, r.side, (v,))
    per_muscle = LabelSchema(labels=m.labels, regions=regions, level="muscle")
    twins = region_twins(per_muscle)
    assert twins["thigh_vastus_medialis_right"] == "thigh_vastus_medialis_left"
    assert twins["calf_soleus_left"] == "calf_soleus_right"
    assert (lr_swap_lut(per_muscle) == lr_swap_lut(m)).all()
