"""Grading stage on frozen features (``grading=staged``): end to end after a smoke fit, the
bundle round trip, no gradient into (and no change to) the network, cases without masks,
mirrored copies, options and the readers' own kappa."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_train

from nxp2seg.models.metrics import GRADING_METRICS

STAGE_EPOCHS = 40


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def phantom4(tmp_path_factory):
    """A tiny phantom cohort: 4 subjects (one held out), readers A and B."""
    from nxp2seg.phantom import generate_cohort

    return generate_cohort(
        tmp_path_factory.mktemp("phantom") / "c4", subjects=4, preset="tiny", seed=0, workers=1
    )


def _overrides(cohort, out, *extra):
    return [
        "experiment=smoke",
        "grading=staged",
        f"data.cohort={cohort}",
        f"output_dir={out / 'run'}",
        f"paths.cache_dir={out / 'cache'}",
        f"paths.root_dir={out}",
        "data.loader.verify_images=false",
        f"grading_stage.epochs={STAGE_EPOCHS}",
        *extra,
    ]


@pytest.fixture(scope="module")
def staged_run(phantom4, tmp_path_factory):
    """One smoke segmentation fit followed by the grading stage (shared by the tests below)."""
    from nxp2seg.train import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose_train(_overrides(phantom4, tmp_path_factory.mktemp("staged")))
        metrics, objects = train(cfg)
    finally:
        torch.set_num_threads(n)
    return metrics, objects


def _stage_inputs(cohort, *extra):
    """Data module and an untrained network of the smoke config, without fitting (fast)."""
    from hydra.utils import instantiate

    from nxp2seg.train import build_grader, build_network

    cfg = compose_train(_overrides(cohort, cohort.parent / "unused", *extra))
    dm = instantiate(cfg.data, grading=False)
    dm.setup("fit")
    torch.manual_seed(0)
    net, _ = build_network(cfg, dm)
    grader, _ = build_grader(cfg, dm, net, learn_thresholds=False)
    return cfg, dm, net, grader


def _run_stage(dm, net, grader, **options):
    from nxp2seg.models.grading_stage import StageOptions, run_grading_stage
    from nxp2seg.models.losses import DEFAULT_LOSS_WEIGHTS
    from nxp2seg.models.myositis import size_divisor_of

    prep = dm.preprocessing
    return run_grading_stage(
        net,
        grader,
        dm,
        StageOptions(**{"enabled": True, "epochs": 3, **options}),
        DEFAULT_LOSS_WEIGHTS,
        canvas_size=list(prep.canvas_size or prep.patch_size),
        size_divisor=size_divisor_of(net),
    )


# -- end to end -------------------------------------------------------------------


def test_config_selects_the_staged_mode():
    from nxp2seg.train import grading_mode

    staged = compose_train(["grading=staged"])
    assert grading_mode(staged) == "staged"
    assert staged.grading_stage.enabled and staged.model.grading.learn_thresholds is False
    assert staged.model.grading_loss.weights.edema == 1.0  # the head's own config, reused
    assert grading_mode(compose_train(["grading=head"])) == "joint"
    assert grading_mode(compose_train([])) == "staged"  # the default grades
    assert grading_mode(compose_train(["grading=none"])) == "none"
    with pytest.raises(ValueError, match="grading=staged"):
        grading_mode(compose_train(["grading=none", "grading_stage.enabled=true"]))


def test_stage_runs_after_the_segmentation_fit_and_writes_metrics(staged_run):
    from nxp2seg.models.bundle import load_bundle

    metrics, objects = staged_run
    dm, model = objects["datamodule"], objects["model"]
    assert dm.mode == "patch" and not dm.grading  # the segmenter trained as without grading
    validation = json.loads((objects["bundle_dir"] / "validation.json").read_text())
    for split in ("val", "test"):
        block = validation[split]
        assert "dice_mean" in block  # the segmentation summary is still there
        for key in (*GRADING_METRICS, "edema_kappa_quadratic_rater_vs_rater"):
            assert key in block, (split, key)
        assert np.isfinite(block["edema_icc"]) and np.isfinite(block["grading_loss"])
        assert -1.0 <= block["edema_kappa_quadratic_rater_vs_rater"] <= 1.0
        np.testing.assert_equal(
            metrics[f"{split}/edema_kappa_quadratic"], block["edema_kappa_quadratic"]
        )
    stage = validation["grading_stage"]
    assert stage["n_cases"] == {k: len(dm.graded_cases(k)) for k in ("train", "val", "test")}
    assert stage["n_train_mirrored"] == 0  # mirror is off by default
    assert stage["epochs_run"] == STAGE_EPOCHS and 0 <= stage["best_epoch"] < STAGE_EPOCHS
    assert stage["seconds"]["extract"] > 0 and stage["seconds"]["fit"] > 0
    # the head sits in the model and the bundle like a jointly trained one
    assert model.grading_enabled and not any(
        p.requires_grad for p in model.grader.features.parameters()
    )
    bundle = load_bundle(objects["bundle_dir"])
    assert bundle.has_grading and bundle.manifest["grader"]["kwargs"]["learn_thresholds"] is False
    keys = set(bundle.state_dict)
    assert {k.split(".")[0] for k in keys} == {"net", "grader"}
    assert {f"grader.{k}" for k in model.grader.state_dict()} <= keys
    # the default schedule keeps the last epoch's head; its validation loss is the last logged
    assert stage["monitor"] == "last" and stage["best_epoch"] == STAGE_EPOCHS - 1
    history = objects["grading_stage"].history
    assert len(history["val_loss"]) == STAGE_EPOCHS and "val_kappa" not in history
    # grading=staged: five MLP members trained apart; the fat and flag read-outs fitted first
    assert stage["ensemble"] == 5 == len(model.grader.head.members)
    assert set(stage["readouts"]) == {"fat", "fascial", "subcutaneous"}
    # the training cases the segmenter saw are segmented from a perturbed input, calibrated
    assert stage["perturbation"]["mode"] == "auto" and stage["perturbation"]["strength"] >= 0


def test_kappa_monitor_keeps_the_best_validation_epoch(staged_run):
    """monitor=edema_kappa_quadratic: the kept head is that of the best validation kappa (ties: loss)."""
    from nxp2seg.models.grading import GradingHead
    from nxp2seg.models.grading_stage import StageOptions, fit_head, head_rows
    from nxp2seg.models.losses import DEFAULT_LOSS_WEIGHTS
    from nxp2seg.models.metrics import grading_metrics

    _, objects = staged_run
    feats, scale = objects["grading_stage"].features, objects["datamodule"].grade_scale
    head = GradingHead(feats["train"].x.shape[-1], scale.max_grade)
    options = StageOptions(enabled=True, epochs=12, monitor="edema_kappa_quadratic")
    fit = fit_head(head, feats["train"], feats["val"], options, DEFAULT_LOSS_WEIGHTS, scale=scale)
    history = fit["history"]
    assert len(history["val_loss"]) == len(history["val_kappa"]) == 12
    kappa = np.nan_to_num(history["val_kappa"], nan=-np.inf)
    loss = np.nan_to_num(history["val_loss"], nan=np.inf)
    best = max(range(12), key=lambda e: (kappa[e], -loss[e]))
    assert fit["best_epoch"] == best
    rows = head_rows(head, feats["val"])
    rows["pattern_index"] = rows["pattern_index"].reshape(-1)
    got = grading_metrics(scale, **rows)["edema_kappa_quadratic"]
    np.testing.assert_equal(got, history["val_kappa"][best])


def test_head_grades_the_same_from_the_bundle(staged_run):
    """predict's path -- the bundle's sliding-window segmentation, then the head inside it -- gives
    the grades the stage validated (the head was trained on exactly these probabilities)."""
    from monai import transforms as mt

    from nxp2seg.data.transforms import preprocess_transforms
    from nxp2seg.inference.predictor import Predictor
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.models.grading_stage import head_rows

    _, objects = staged_run
    result, dm = objects["grading_stage"], objects["datamodule"]
    bundle = load_bundle(objects["bundle_dir"])
    predictor = Predictor(bundle)
    rebuilt = predictor.model
    assert rebuilt.grades_from_probabilities  # grading=staged reads no decoder features
    load = mt.Compose(preprocess_transforms(bundle.preprocessing, with_label=False))
    feats = result.features["val"]
    expected = head_rows(objects["model"].grader.head, feats)
    for i, item in enumerate(dm.grading_items("val")):
        assert feats.case_ids[i] == item["case_id"]
        image = torch.as_tensor(load(dict(item))["image"])[None]
        allowed = torch.as_tensor(item["allowed_labels"])[None]
        probs = torch.softmax(predictor.segmenter.infer(image, allowed), dim=1)
        got = rebuilt.grade_probabilities(probs, image, [item["station"]])
        for key in ("edema", "fat", "fascial_prob", "subcut_prob", "pattern_prob"):
            np.testing.assert_allclose(got[key][0].numpy(), expected[key][i], atol=1e-4, err_msg=key)


def test_network_weights_are_those_of_the_best_checkpoint(staged_run):
    from nxp2seg.models.bundle import load_bundle

    _, objects = staged_run
    best = objects["validation"]["best_checkpoint"]
    assert best
    ckpt = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    state = load_bundle(objects["bundle_dir"]).state_dict
    net_keys = [k for k in ckpt if k.startswith("net.")]
    assert net_keys and all(torch.equal(state[k], ckpt[k]) for k in net_keys)


# -- the stage on its own -----------------------------------------------------------


def test_features_carry_no_gradient_and_leave_the_network_unchanged(phantom4):
    _, dm, net, grader = _stage_inputs(phantom4)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    head_before = {k: v.clone() for k, v in grader.head.state_dict().items()}
    result = _run_stage(dm, net, grader)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())
    assert net.training  # mode restored
    for f in result.features.values():
        assert not f.x.requires_grad and f.x.grad_fn is None
        assert torch.isfinite(f.x).all()
    # only the head learned
    assert any(not torch.equal(head_before[k], v) for k, v in grader.head.state_dict().items())


def test_cases_without_masks_train_the_head(phantom4):
    from nxp2seg.models.losses import grading_losses

    _, dm, net, grader = _stage_inputs(phantom4, "data.split.mask_fraction=0.5")
    hidden = dm.hidden_masks
    assert hidden and not hidden & set(dm.splits["train"])  # the segmenter never saw them
    assert hidden <= set(dm.graded_cases("train"))  # ... the grading stage does
    result = _run_stage(dm, net, grader, mirror=False)
    train = result.features["train"]
    rows = [i for i, c in enumerate(train.case_ids) if c in hidden]
    assert rows and not train.has_mask[rows].any()
    assert result.summary["n_train_without_mask"] == len(hidden)
    assert torch.isfinite(train.targets["edema_target"][rows]).any()
    # their graded targets give the head a gradient
    grader.head.zero_grad()
    out = grader.head(train.x[rows], train.station_index[rows])
    loss = grading_losses(out, train.batch(torch.as_tensor(rows)))["edema"]
    loss.backward()
    assert loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in grader.head.parameters())


def test_mirrored_copies_swap_right_and_left(phantom4):
    from nxp2seg.data.regions import lr_permutation
    from nxp2seg.data.transforms import preprocess_transforms, world_lr_axis
    from nxp2seg.models.grading_stage import _mirror_transform

    _, dm, net, grader = _stage_inputs(phantom4)
    result = _run_stage(dm, net, grader, mirror=True, epochs=1)
    train = result.features["train"]
    items = dm.grading_items("train")
    assert len(train) == 2 * len(items) and int(train.mirrored.sum()) == len(items)
    for i, item in enumerate(items):
        orig, mirr = 2 * i, 2 * i + 1
        assert train.case_ids[orig] == train.case_ids[mirr] == item["case_id"]
        assert not train.mirrored[orig] and train.mirrored[mirr]
        perm = lr_permutation(dm.schema, item["station"])
        assert perm.tolist() == [3, 4, 5, 0, 1, 2]
        for key in ("edema_target", "fat_target", "fascial_target", "subcut_target"):
            np.testing.assert_array_equal(
                train.targets[key][mirr].numpy(), train.targets[key][orig].numpy()[perm]
            )
        np.testing.assert_array_equal(
            train.targets["pattern_target"][mirr].numpy(),
            train.targets["pattern_target"][orig].numpy(),
        )
        assert train.station_index[mirr] == train.station_index[orig]
        assert not torch.equal(train.x[mirr], train.x[orig])  # a second pass, on the mirror
    assert not result.features["val"].mirrored.any()  # only training cases are mirrored
    # the image: mirrored along the world left-right axis, laterality negated
    from monai import transforms as mt

    d = mt.Compose(preprocess_transforms(dm.preprocessing, with_label=False))(dict(items[0]))
    m = _mirror_transform(dm)(dict(d))
    axis = world_lr_axis(d["image"].affine) + 1
    lat = len(dm.preprocessing.channels)
    flipped = torch.flip(torch.as_tensor(d["image"]), dims=(axis,))
    assert torch.equal(torch.as_tensor(m["image"])[:lat], flipped[:lat])
    assert torch.equal(torch.as_tensor(m["image"])[lat], -flipped[lat])


# -- options and references -----------------------------------------------------------


def test_options_are_checked(phantom4):
    from nxp2seg.models.grading import build_grader
    from nxp2seg.models.grading_stage import StageOptions

    with pytest.raises(ValueError, match="unknown keys"):
        StageOptions.from_mapping({"epoch": 3})
    with pytest.raises(ValueError, match="monitor"):
        StageOptions(monitor="dice")
    with pytest.raises(ValueError, match="perturb"):
        StageOptions(perturb="strong")
    assert StageOptions.from_mapping(None) == StageOptions()
    _, dm, net, _ = _stage_inputs(phantom4)
    learnable = build_grader(16, dm.preprocessing.target_spacing, 5, learn_thresholds=True)
    with pytest.raises(ValueError, match="learn_thresholds"):
        _run_stage(dm, net, learnable)


def test_rater_kappa_on_the_same_cases():
    from nxp2seg.data.schema import get_grade_scale
    from nxp2seg.models.metrics import rater_edema_kappa
    from nxp2seg.stats.agreement import cohen_kappa

    scale = get_grade_scale("beltrame6")
    a = [0, 1, 2, 3, 4, 5, 2, 1]
    b = [0, 1, 3, 3, 4, 4, 2, 2]
    c = [1, 1, 2, 3, 5, 5, 2, 1]
    rows = []
    for rater, grades in (("A", a), ("B", b), ("C", c)):
        for i, g in enumerate(grades):
            rows.append(
                {"case_id": f"K{i // 4}", "rater": rater, "region": f"r{i % 4}", "edema_grade": g}
            )
    df = pd.DataFrame(rows)
    labels = np.arange(6)
    ab = cohen_kappa(a, b, weights="quadratic", labels=labels)
    ac = cohen_kappa(a, c, weights="quadratic", labels=labels)
    bc = cohen_kappa(b, c, weights="quadratic", labels=labels)
    assert rater_edema_kappa(df[df.rater != "C"], scale) == pytest.approx(ab)
    assert rater_edema_kappa(df, scale) == pytest.approx((ab + ac + bc) / 3)
    # only the given cases; a region graded by one rater only is not compared
    only = cohen_kappa(a[:4], b[:4], weights="quadratic", labels=labels)
    assert rater_edema_kappa(df[df.rater != "C"], scale, ["K0"]) == pytest.approx(only)
    df.loc[(df.rater == "B") & (df.case_id == "K1"), "edema_grade"] = np.nan
    assert rater_edema_kappa(df[df.rater != "C"], scale) == pytest.approx(only)
    assert np.isnan(rater_edema_kappa(df[df.rater == "A"], scale))


def test_default_staged_run_without_grades_skips_the_stage(train_overrides):
    """A cohort without grades.csv rows trains the segmenter and says the head was skipped."""
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.train import train

    cfg = compose_train([*train_overrides, "trainer.max_epochs=1", "test=false"])
    _, objects = train(cfg)
    bundle = load_bundle(objects["bundle_dir"])
    assert not bundle.has_grading
    assert bundle.validation["grading_stage"] == {"skipped": "no graded training case"}


def _synthetic_features(n=40, r=6, f=5, seed=0):
    from nxp2seg.models.grading_stage import CaseFeatures

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, r, f, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0]) + 3.0
    fat = 4 * torch.sigmoid(2 * (x[..., 0] - 3.0))  # fat follows feature 0
    fascial = ((x[..., 1] - 3.0) / 10 > 0.8).float()  # present (both readers) where feature 1 is high
    z2 = (x[..., 2] - 3.0) / 0.1
    subcut = torch.where(z2 > 1.0, 1.0, torch.where(z2 > 0.0, 0.5, 0.0))  # 0.5: a 1-1 split
    targets = {
        "edema_target": torch.zeros(n, r),
        "fat_target": fat,
        "fascial_target": fascial,
        "subcut_target": subcut,
        "pattern_target": torch.full((n, 4), 0.25),
        "pattern_index": torch.zeros(n),
    }
    targets["fat_target"][0, 0] = float("nan")  # not graded: left out
    return CaseFeatures(x=x, station_index=torch.zeros(n, dtype=torch.long), targets=targets,
                        case_ids=[f"C{i}" for i in range(n)], mirrored=torch.zeros(n, dtype=torch.bool),
                        has_mask=torch.ones(n, dtype=torch.bool))


def test_fit_readouts_standardises_and_fits_penalised_glms():
    from nxp2seg.models.grading import GradingHead
    from nxp2seg.models.grading_stage import fit_readouts
    from nxp2seg.stats.classification import roc_auc

    feats = _synthetic_features()
    head = GradingHead(5, 5)
    report = fit_readouts(head, feats, l2=1e-3)
    flat = feats.x.reshape(-1, 5)
    assert torch.allclose(head.readout_mean, flat.mean(0)) and torch.allclose(head.readout_std, flat.std(0))
    assert report["fat"]["n"] == 40 * 6 - 1 and report["fascial"]["n"] == 240
    with torch.no_grad():
        out = head.eval()(feats.x, feats.station_index)
    fat_err = (out["fat"] - feats.targets["fat_target"]).abs()
    assert float(fat_err[torch.isfinite(fat_err)].mean()) < 0.1  # a near-exact fit of a sigmoid of feature 0
    y = feats.targets["fascial_target"].reshape(-1).numpy()
    assert roc_auc(y, out["fascial_logit"].reshape(-1).numpy()) > 0.99
    # the readers' call on subcutaneous edema: both readers (z > 1); a 1-1 split is not a finding
    z2 = ((feats.x[..., 2] - 3.0) / 0.1).reshape(-1)
    p = torch.sigmoid(out["subcut_logit"]).reshape(-1)
    assert roc_auc((z2 > 1).int().numpy(), p.numpy()) > 0.99
    assert float(p[(z2 > 0.2) & (z2 < 0.8)].max()) < 0.5
    # the penalty shrinks the weights
    strong = GradingHead(5, 5)
    fit_readouts(strong, feats, l2=10.0)
    assert float(strong.readout.weight.abs().sum()) < float(head.readout.weight.abs().sum())


def test_ensemble_members_train_apart_and_grade_together():
    from nxp2seg.models.grading import GradingHead
    from nxp2seg.models.grading_stage import StageOptions, fit_head
    from nxp2seg.models.losses import DEFAULT_LOSS_WEIGHTS

    feats = _synthetic_features()
    feats.targets["edema_target"] = 5 * torch.sigmoid(feats.x[..., 3] - 3.0)
    torch.manual_seed(0)
    head = GradingHead(5, 5, ensemble=3)
    fit = fit_head(head, feats, None, StageOptions(enabled=True, epochs=5), DEFAULT_LOSS_WEIGHTS)
    assert len(fit["members"]) == 3 and head.active_member is None
    with torch.no_grad():
        each = []
        for i in range(3):
            head.active_member = i
            each.append(head(feats.x, feats.station_index)["edema"])
        head.active_member = None
        together = head(feats.x, feats.station_index)["edema"]
    assert not torch.allclose(each[0], each[1])  # own initialisation and seed
    assert torch.allclose(together, torch.stack(each).mean(0), atol=1e-6)


# -- grade scales and label levels -------------------------------------------------


def test_muscle_level_slots_pad_the_smaller_station():
    from helpers_muscle import per_muscle_schema

    from nxp2seg.data.regions import (
        case_targets,
        lr_permutation,
        n_region_slots,
        region_membership,
        slot_counts,
        subcut_membership,
    )
    from nxp2seg.data.schema import get_grade_scale

    schema = per_muscle_schema()
    assert slot_counts(schema) == (26, 22) and n_region_slots(schema) == 26
    c = schema.max_label + 1
    calf = region_membership(schema, "calf", c)
    assert calf.shape == (26, c) and calf[:22].sum(axis=1).tolist() == [1.0] * 22
    assert not calf[22:].any() and not subcut_membership(schema, "calf", c)[22:].any()
    names = schema.region_names("thigh")
    perm = lr_permutation(schema, "thigh")
    assert names[perm[names.index("vastus_lateralis_right")]] == "vastus_lateralis_left"
    assert names[perm[names.index("semitendinosus_left")]] == "semitendinosus_right"
    assert lr_permutation(schema, "calf")[22:].tolist() == [22, 23, 24, 25]  # empty slots stay
    grades = pd.DataFrame(
        {"case_id": "c1", "rater": "A", "region": "soleus_left", "edema_grade": [2.0],
         "fat_grade": [1.0], "fascial_edema": [0.0], "subcutaneous_edema": [1.0]}
    )
    t = case_targets(grades, None, schema, get_grade_scale("extent4"), {"c1": "calf"})["c1"]
    slot = schema.region_names("calf").index("soleus_left")
    assert t["edema_target"].shape == (26,) and t["edema_target"][slot] == 2.0
    assert np.isnan(np.delete(t["edema_target"], slot)).all()


def test_empty_slots_do_not_reach_the_head_outputs():
    from nxp2seg.models.grading import GradingHead

    torch.manual_seed(0)
    head = GradingHead(7, max_grade=3, n_regions=5, slot_counts=[5, 3], ensemble=2).eval()
    x = torch.randn(2, 5, 7)
    station = torch.tensor([0, 1])
    out = head(x, station)
    noisy = x.clone()
    noisy[1, 3:] = 100.0  # garbage in the calf's empty slots
    again = head(noisy, station)
    for k in ("edema", "fat", "fascial_logit", "subcut_logit", "pattern_logits"):
        assert torch.allclose(out[k], again[k]), k
    assert (out["edema"][1, 3:] == 0).all() and (out["fat"][1, 3:] == 0).all()
    assert (out["edema"][0] > 0).all()  # the thigh uses every slot
    with pytest.raises(ValueError, match="slot_counts"):
        GradingHead(7, max_grade=3, n_regions=5, slot_counts=[6, 3])


@pytest.fixture(scope="module")
def muscle_run(tmp_path_factory):
    """The default grading mode, default logger and callbacks on a muscle-graded extent4 cohort."""
    from helpers_muscle import muscle_graded_phantom

    from nxp2seg.train import train

    root = tmp_path_factory.mktemp("muscle")
    cohort = muscle_graded_phantom(root / "m4", subjects=4, seed=0, grade_scale="extent4")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose_train(_overrides(cohort, root, "grading_stage.perturb=0", "grading_stage.epochs=3"))
        assert "csv" in cfg.logger and "model_checkpoint" in cfg.callbacks  # the defaults
        _, objects = train(cfg)
    finally:
        torch.set_num_threads(n)
    return objects


def test_the_cohort_scale_and_muscle_regions_reach_the_staged_head(muscle_run):
    from nxp2seg.models.bundle import load_bundle

    dm, model = muscle_run["datamodule"], muscle_run["model"]
    assert dm.grade_scale.name == "extent4" and model.grade_scale.max_grade == 3
    assert model.grader.head.max_grade == 3.0 and model.grader.head.n_regions == 26
    assert (muscle_run["cfg"].output_dir and (muscle_run["bundle_dir"].parent / "csv" / "metrics.csv").is_file())
    bundle = load_bundle(muscle_run["bundle_dir"])
    assert bundle.grade_scale.name == "extent4"
    kwargs = bundle.manifest["grader"]["kwargs"]
    assert kwargs["max_grade"] == 3 and kwargs["n_regions"] == 26 and kwargs["slot_counts"] == [26, 22]
    net = bundle.build_model()
    shape = dm.preprocessing.canvas_size or dm.preprocessing.patch_size
    out = net.predict(torch.randn(2, 3, *shape), ["thigh", "calf"])
    assert out["edema"].shape == (2, 26)
    assert ((out["edema"] >= 0) & (out["edema"] <= 3)).all()
    assert (out["edema"][1, 22:] == 0).all() and (out["edema"][0] > 0).all()
    val = bundle.validation["val"]
    assert "station_score_icc" in val and "edema_kappa_quadratic" in val
