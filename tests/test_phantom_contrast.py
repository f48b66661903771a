"""The phantom's contrast table as config, and the Dixon (fat, water) rendering."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.verify import verify_cohort
from nxp2seg.phantom import generate_cohort
from nxp2seg.phantom.__main__ import main as phantom_main
from nxp2seg.phantom.__main__ import parse_overrides
from nxp2seg.phantom.anatomy import Tissue
from nxp2seg.phantom.config import make_config
from nxp2seg.phantom.render import sample_contrast

NO_OWN_STIR_GRID = {"stir_coarse_probability": 0.0, "stir_shift_probability": 0.0, "stir_own_axcodes_probability": 0.0}


def _table_before_config(rng):
    """The contrast table as the code held it before it became config (frozen copy, draw for draw)."""
    u = rng.uniform
    t1, st = np.zeros(9, np.float32), np.zeros(9, np.float32)
    t1[Tissue.SKIN], st[Tissue.SKIN] = u(1.1, 1.3), u(1.1, 1.4)
    t1[Tissue.FAT], st[Tissue.FAT] = u(3.0, 3.4), u(0.15, 0.3)
    t1[Tissue.FASCIA], st[Tissue.FASCIA] = u(1.6, 2.0), u(0.4, 0.6)
    t1[Tissue.MUSCLE], st[Tissue.MUSCLE] = 1.0, 1.0
    t1[Tissue.SEPTUM], st[Tissue.SEPTUM] = u(1.6, 2.0), u(0.4, 0.6)
    t1[Tissue.CORTEX], st[Tissue.CORTEX] = u(0.05, 0.15), u(0.05, 0.15)
    t1[Tissue.MARROW], st[Tissue.MARROW] = u(3.0, 3.4), u(0.15, 0.3)
    t1[Tissue.VESSEL], st[Tissue.VESSEL] = u(0.4, 0.7), u(1.8, 2.6)
    return t1, st, (u(1.3, 1.5), u(0.6, 0.75))


def test_default_table_draws_what_the_hard_coded_table_drew():
    for seed in range(5):
        old_rng, new_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        t1, st, septum = _table_before_config(old_rng)
        c = sample_contrast(new_rng)
        np.testing.assert_array_equal(c.c0[:9], t1)  # Tissue.FLUID (9, pelvic slices only) came later
        np.testing.assert_array_equal(c.c1[:9], st)
        assert c.c0[Tissue.FLUID] == c.c1[Tissue.FLUID] == 0
        assert c.muscle_septum == septum and c.intramuscular_fat == (3.2, 0.2)
        assert old_rng.random() == new_rng.random()  # the stream is left where it was


def test_default_table_reproduces_the_cohort_written_before(tmp_path):
    """Default config == the table written out in full: same bytes (the table as config changes nothing)."""
    explicit = {
        "muscle": {"t1": [1.0, 1.0], "stir": [1.0, 1.0]},
        "fat": {"t1": [3.0, 3.4], "stir": [0.15, 0.3]},
        "marrow": {"t1": [3.0, 3.4], "stir": [0.15, 0.3]},
        "septa": {"t1": [1.6, 2.0], "stir": [0.4, 0.6]},
        "muscle_septa": {"t1": [1.3, 1.5], "stir": [0.6, 0.75]},
        "cortex": {"t1": [0.05, 0.15], "stir": [0.05, 0.15]},
        "skin": {"t1": [1.1, 1.3], "stir": [1.1, 1.4]},
        "vessel": {"t1": [0.4, 0.7], "stir": [1.8, 2.6]},
        "mild_edema": {"t1": [0.9, 1.0], "stir": [1.4, 1.9]},
        "moderate_edema": {"t1": [0.85, 0.95], "stir": [2.2, 3.2]},
        "subcutaneous_edema": {"t1": [2.0, 2.4], "stir": [1.6, 2.5]},
        "fascial_edema": {"t1": [1.0, 1.0], "stir": [2.0, 3.0]},
        "intramuscular_fat": {"t1": [3.2, 3.2], "stir": [0.2, 0.2]},
    }
    a = generate_cohort(tmp_path / "a", subjects=2, preset="tiny", seed=5, workers=1)
    b = generate_cohort(tmp_path / "b", subjects=2, preset="tiny", seed=5, workers=1, contrast=explicit)
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    assert len(files) > 10
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def _median_ratio(root: Path, num_mask, den_mask, channel: int) -> float:
    cohort = Cohort.open(root)
    out = []
    for cid in cohort.case_ids:
        img = np.asarray(nib.load(cohort.image_path(cid, channel)).dataobj).astype(float)
        lab = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        edema = np.asarray(nib.load(root / "truth" / "edema" / f"{cid}.nii.gz").dataobj) > 0
        num, den = num_mask(lab, edema), den_mask(lab, edema)
        if num.sum() > 5 and den.sum() > 5:
            out.append(np.median(img[num]) / np.median(img[den]))
    return float(np.median(out))


def _muscle(lab):
    return (lab >= 1) & (lab <= 12)


def test_an_override_changes_the_rendered_ratio(tmp_path):
    kw = {"subjects": 2, "preset": "tiny", "seed": 2, "workers": 1, "acquisition": NO_OWN_STIR_GRID}
    base = generate_cohort(tmp_path / "base", **kw)
    bright = generate_cohort(tmp_path / "bright", **kw, contrast={"fat": {"t1": [5.0, 5.0]}})
    subcut = lambda lab, ed: (lab == 13) | (lab == 14)
    plain_muscle = lambda lab, ed: _muscle(lab) & ~ed
    r0 = _median_ratio(base, subcut, plain_muscle, 0)
    r1 = _median_ratio(bright, subcut, plain_muscle, 0)
    assert 2.3 < r0 < 3.6 and r1 > 1.3 * r0, (r0, r1)
    # edema on STIR: both intensities pushed to 3.5 brighten the edematous muscle
    loud = generate_cohort(tmp_path / "loud", **kw, contrast={
        "mild_edema": {"stir": [3.5, 3.5]}, "moderate_edema": {"stir": [3.5, 3.5]}})
    edematous = lambda lab, ed: _muscle(lab) & ed
    e0 = _median_ratio(base, edematous, plain_muscle, 1)
    e1 = _median_ratio(loud, edematous, plain_muscle, 1)
    assert e1 > e0 + 0.5, (e0, e1)


def test_contrast_overrides_parse_from_the_command_line(tmp_path):
    cfg = make_config(parse_overrides(["contrast.mild_edema.stir=[1.2,1.6]", "sequence=dixon"]))
    assert cfg.contrast.mild_edema.stir == (1.2, 1.6)
    assert cfg.contrast.mild_edema.t1 == (0.9, 1.0)  # the other channel keeps its default
    assert cfg.sequence == "dixon"
    with pytest.raises(ValueError, match="contrast.fat.t1"):
        make_config({"contrast": {"fat": {"t1": [3.0, 2.0]}}})
    with pytest.raises(ValueError, match="unknown phantom option 'contrast.bone'"):
        make_config({"contrast": {"bone": {"t1": [1, 2]}}})
    with pytest.raises(ValueError, match="sequence"):
        make_config({"sequence": "flair"})
    assert phantom_main([f"out={tmp_path / 'x'}", "contrast.fat.t1=[4,3]"]) == 2


@pytest.fixture(scope="module")
def dixon_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("dixon")
    kw = {"subjects": 2, "preset": "tiny", "seed": 7, "workers": 1}
    return generate_cohort(root / "ts", **kw), generate_cohort(root / "dx", **kw, sequence="dixon")


def test_dixon_cohort_has_fat_and_water_channels_and_verifies(dixon_pair):
    _, dx = dixon_pair
    cohort = Cohort.open(dx)
    assert cohort.dataset.channel_names == {"0": "FAT", "1": "WATER"}
    assert verify_cohort(dx).ok
    for cid in cohort.case_ids:
        fat, water = (nib.load(cohort.image_path(cid, c)) for c in (0, 1))
        assert fat.shape == water.shape and np.allclose(fat.affine, water.affine)  # one acquisition


def test_dixon_renders_the_same_anatomy_and_disease(dixon_pair):
    ts, dx = dixon_pair
    for sub in ("labelsTr", "truth/edema", "truth/fat_percent", "truth/labels_muscle"):
        for f in sorted((ts / sub).glob("*.nii.gz")):
            assert f.read_bytes() == (dx / sub / f.name).read_bytes(), f"{sub}/{f.name}"


def test_dixon_fat_fraction_follows_tissue_and_infiltration(dixon_pair):
    _, dx = dixon_pair
    cohort = Cohort.open(dx)
    for cid in cohort.case_ids:
        fat, water = (np.asarray(nib.load(cohort.image_path(cid, c)).dataobj).astype(float) for c in (0, 1))
        lab = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        truth = np.asarray(nib.load(dx / "truth" / "fat_percent" / f"{cid}.nii.gz").dataobj) / 100.0
        ff = fat / np.maximum(fat + water, 1)
        subcut, muscle = (lab == 13) | (lab == 14), _muscle(lab)
        assert np.median(ff[subcut]) > 0.55, cid  # adipose tissue (with skin, at 6.5 mm voxels)
        clean = muscle & (truth == 0)
        assert np.median(ff[clean]) < 0.25, cid  # normal muscle: water
        fatty = muscle & (truth > 0.5)
        if fatty.sum() > 5:
            assert np.median(ff[fatty]) > np.median(ff[clean]) + 0.2, cid
