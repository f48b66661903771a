"""The grading stage: end to end after a smoke fit, the bundle round trip, no gradient into (and
no change to) the network, cases without masks, the config, the scikit-learn read-outs, the
Lightning-fitted ensemble, cross-fitting, operating points, the readers' own kappa, and the
cohort's grade scale and label level reaching the grader."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_train

from nxp2seg.models.metrics import GRADING_METRICS

FIT_EPOCHS = 8


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
        f"data.cohort={cohort}",
        f"output_dir={out / 'run'}",
        f"paths.cache_dir={out / 'cache'}",
        f"paths.root_dir={out}",
        "data.loader.verify_images=false",
        f"grading.fit.epochs={FIT_EPOCHS}",
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
    """Data module, an untrained network and a fresh grader of the smoke config, without fitting (fast)."""
    from hydra.utils import instantiate

    from nxp2seg.models.grading_spec import instantiate_spec
    from nxp2seg.models.myositis import GradingNet
    from nxp2seg.models.segmenter import Segmenter
    from nxp2seg.train import build_grader, build_network

    cfg = compose_train(_overrides(cohort, cohort.parent / "unused", "grading.fit.perturb=0", *extra))
    dm = instantiate(cfg.data, grading=False)
    dm.setup("fit")
    torch.manual_seed(0)
    net, _ = build_network(cfg, dm)
    grader, _ = build_grader(cfg, dm, net)
    prep = dm.preprocessing
    model = GradingNet(net, grader, canvas_size=prep.canvas_size or prep.patch_size, schema=dm.schema,
                       grade_scale=dm.grade_scale.name)
    segmenter = Segmenter(net=net, loss=torch.nn.Identity(), optimizer=torch.optim.SGD,
                          patch_size=prep.patch_size, inference=dict(cfg.model.inference))
    spec = instantiate_spec(cfg.grading)
    return spec, dm, model, segmenter


def _run_stage(spec, dm, model, segmenter, **fit):
    import dataclasses

    from nxp2seg.models.grading_stage import run_grading_stage

    spec = dataclasses.replace(spec, fit=dataclasses.replace(spec.fit, **{"epochs": 3, **fit}))
    return run_grading_stage(model, dm, spec, segment=segmenter.infer)


# -- end to end -------------------------------------------------------------------


def test_config_selects_the_grading_stage():
    from nxp2seg.models.grading_spec import FeatureSpec, GraderSpec, instantiate_spec
    from nxp2seg.train import grading_enabled

    default = compose_train([])
    assert grading_enabled(default) and grading_enabled(compose_train(["grading=staged"]))
    assert not grading_enabled(compose_train(["grading=none"]))
    spec = instantiate_spec(default.grading)  # Hydra builds the dataclasses named in the config
    assert isinstance(spec, GraderSpec) and isinstance(spec.features, FeatureSpec)
    assert spec.features.decoder_features and spec.head.ensemble == 5 and spec.fit.folds == 5
    assert spec.features.fat_levels == (0.1, 0.25, 0.5, 0.75)  # lists become the fields' tuples
    assert GraderSpec.from_mapping(default.grading) == spec  # the plain path (bundles) agrees
    assert instantiate_spec(compose_train(["grading.fit.epochs=7"]).grading).fit.epochs == 7
    with pytest.raises(ValueError, match="grading"):
        instantiate_spec(compose_train(["+grading.fit.epoch=3"]).grading)
    assert "grading_stage" not in default and "grading" not in default.model  # one grading block


def test_stage_runs_after_the_segmentation_fit_and_writes_metrics(staged_run):
    from nxp2seg.models.bundle import load_bundle

    metrics, objects = staged_run
    dm, graded = objects["datamodule"], objects["graded"]
    assert dm.mode == "patch" and not dm.grading  # the segmenter trained as without grading
    validation = json.loads((objects["bundle_dir"] / "validation.json").read_text())
    for split in ("val", "test"):
        block = validation[split]
        assert "dice_mean" in block  # the segmentation summary is still there
        for key in (*GRADING_METRICS, "edema_kappa_quadratic_rater_vs_rater"):
            assert key in block, (split, key)
        assert np.isfinite(block["edema_icc"])
        assert -1.0 <= block["edema_kappa_quadratic_rater_vs_rater"] <= 1.0
        np.testing.assert_equal(metrics[f"{split}/edema_kappa_quadratic"], block["edema_kappa_quadratic"])
    stage = validation["grading_stage"]
    assert stage["n_cases"] == {k: len(dm.graded_cases(k)) for k in ("train", "val", "test")}
    assert stage["fit"]["epochs"] == [FIT_EPOCHS] * 5  # five members, a fixed schedule
    assert set(stage["fit"]["readouts"]) == {"fat", "fascial", "subcutaneous"}
    assert stage["seconds"]["extract"] > 0 and stage["seconds"]["fit"] > 0
    # thresholds in the cohort's units, and what they came from
    assert stage["cohort_scale"]["n_cases"] >= 1 and stage["cohort_scale"]["q_sd"] > 0
    tau = stage["thresholds"]["stir_tau"]
    assert tau == sorted(tau) and tau[0] > 1.0
    # operating points chosen on out-of-fold predictions of the training subjects
    op = stage["operating"]
    assert op["chosen_on"].startswith("out-of-fold")
    assert 0.0 <= op["points"]["fascial_threshold"] <= 1.0
    assert op["report"]["fascial_threshold"]["rule"] == "youden"
    # the training cases the segmenter saw are segmented from a perturbed input, calibrated
    assert stage["perturbation"]["mode"] == "auto" and stage["perturbation"]["strength"] >= 0
    # the grader sits in the bundle beside the network; nothing in it is trainable upstream
    assert not any(p.requires_grad for p in graded.grader.features.parameters())
    bundle = load_bundle(objects["bundle_dir"])
    assert bundle.has_grading and bundle.manifest["grader"]["kwargs"]["spec"]["fit"]["folds"] == 5
    keys = set(bundle.state_dict)
    assert {k.split(".")[0] for k in keys} == {"net", "grader"}
    assert {f"grader.{k}" for k in graded.grader.state_dict()} <= keys
    rebuilt = bundle.build_grader()
    assert json.dumps(rebuilt.operating_points()) == json.dumps(graded.grader.operating_points())
    assert json.dumps(rebuilt.features.thresholds()) == json.dumps(graded.grader.features.thresholds())


def test_head_grades_the_same_from_the_bundle(staged_run):
    """predict's path -- the bundle's sliding-window segmentation, then the grader inside it -- gives
    the grades the stage validated (the head was trained on exactly these probabilities)."""
    from monai import transforms as mt

    from nxp2seg.data.pipelines import preprocess_transforms
    from nxp2seg.inference.predictor import Predictor
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.models.grading_stage import stage_rows

    _, objects = staged_run
    result, dm = objects["grading_stage"], objects["datamodule"]
    bundle = load_bundle(objects["bundle_dir"])
    predictor = Predictor(bundle)
    rebuilt = predictor.model
    assert rebuilt.reads_decoder  # the default grader pools the network's decoder features
    load = mt.Compose(preprocess_transforms(bundle.preprocessing, with_label=False))
    feats = result.features["val"]
    expected = stage_rows(objects["graded"].grader, feats)
    for i, item in enumerate(dm.grading_items("val")):
        assert feats.case_ids[i] == item["case_id"]
        image = torch.as_tensor(load(dict(item))["image"])[None]
        allowed = torch.as_tensor(item["allowed_labels"])[None]
        probs = torch.softmax(predictor.segmenter.infer(image, allowed), dim=1)
        got = rebuilt.grade_probabilities(probs, image, [item["station"]])
        for key in ("edema", "fat", "fascial_prob", "subcut_prob", "pattern_prob", "edema_int", "fascial_flag"):
            np.testing.assert_allclose(got[key][0].float().numpy(), np.asarray(expected[key][i], float),
                                       atol=1e-4, err_msg=key)


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
    spec, dm, model, segmenter = _stage_inputs(phantom4)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.grader.head.state_dict().items()}
    result = _run_stage(spec, dm, model, segmenter, folds=0)
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.net.parameters())
    for f in result.features.values():
        assert not f.x.requires_grad and f.x.grad_fn is None
        assert torch.isfinite(f.x).all()
    # only the head learned; operating points on the validation cases without folds
    assert any(not torch.equal(head_before[k], v) for k, v in model.grader.head.state_dict().items())
    assert result.summary["operating"]["chosen_on"] == "the validation cases"


def test_cases_without_masks_train_the_head(phantom4):
    from nxp2seg.models.losses import masked_regression

    spec, dm, model, segmenter = _stage_inputs(phantom4, "data.split.mask_fraction=0.5")
    hidden = dm.hidden_masks
    assert hidden and not hidden & set(dm.splits["train"])  # the segmenter never saw them
    assert hidden <= set(dm.graded_cases("train"))  # ... the grading stage does
    result = _run_stage(spec, dm, model, segmenter, folds=0)
    train = result.features["train"]
    rows = [i for i, c in enumerate(train.case_ids) if c in hidden]
    assert rows and not train.has_mask[rows].any()
    assert result.summary["n_train_without_mask"] == len(hidden)
    assert torch.isfinite(train.targets["edema_target"][rows]).any()
    # the cohort statistics come from the training cases that kept their masks
    assert result.summary["cohort_scale"]["n_cases"] == len(set(dm.graded_cases("train")) - hidden)
    # their graded targets give the head a gradient
    head = model.grader.head
    head.zero_grad()
    out = head(train.x[rows], train.station_index[rows])
    loss = masked_regression(out["edema"], train.targets["edema_target"][rows])
    loss.backward()
    assert loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


# -- config ------------------------------------------------------------------------


def test_the_grading_config_is_checked():
    from nxp2seg.models.grading_spec import FitSpec, GraderSpec, OperatingSpec

    with pytest.raises(ValueError, match="unknown keys"):
        GraderSpec.from_mapping({"fitting": {}})
    with pytest.raises(ValueError, match="unknown keys"):
        GraderSpec.from_mapping({"fit": {"epoch": 3}})
    with pytest.raises(ValueError, match="perturb"):
        FitSpec(perturb="strong")
    with pytest.raises(ValueError, match="folds"):
        FitSpec(folds=1)
    with pytest.raises(ValueError, match="flags"):
        OperatingSpec(flags="f1")
    with pytest.raises(ValueError, match="readout_c"):
        FitSpec(readout_c="best")
    with pytest.raises(ValueError, match="readout_c_grid"):
        FitSpec(readout_c_grid=[0.1, 0.0])
    with pytest.raises(ValueError, match="unknown read-outs"):
        FitSpec(readout_features={"fascia": ["rim/*"]})
    spec = GraderSpec.from_mapping({"enabled": True, "features": {"muscle_sd": [2, 5]}})
    assert spec.features.muscle_sd == (2.0, 5.0) and GraderSpec.from_mapping(None) == GraderSpec()
    assert GraderSpec.from_mapping(spec.to_dict()) == spec  # what the bundle records rebuilds it


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


# -- fitting --------------------------------------------------------------------------


def _synthetic_features(n=40, r=6, f=5, seed=0):
    from nxp2seg.models.grading_features import CaseFeatures

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
                        case_ids=[f"C{i}" for i in range(n)], subject_ids=[f"S{i // 2}" for i in range(n)],
                        has_mask=torch.ones(n, dtype=torch.bool))


def test_fit_readouts_are_scikit_learn_logistic_regressions():
    from sklearn.linear_model import LogisticRegression

    from nxp2seg.models.grading_fit import fit_readouts
    from nxp2seg.models.grading_head import GradingHead
    from nxp2seg.stats.classification import roc_auc

    feats = _synthetic_features()
    head = GradingHead(5, 5)
    report = fit_readouts(head, feats, c=100.0)
    flat = feats.x.reshape(-1, 5).double()
    assert torch.allclose(head.readout_mean.double(), flat.mean(0), atol=1e-5)
    assert torch.allclose(head.readout_std.double(), flat.std(0), atol=1e-5)
    assert report["fat"]["n"] == 40 * 6 - 1 and report["fascial"]["n"] == 240
    with torch.no_grad():
        out = head.eval()(feats.x, feats.station_index)
    fat_err = (out["fat"] - feats.targets["fat_target"]).abs()
    assert float(fat_err[torch.isfinite(fat_err)].mean()) < 0.1  # a near-exact fit of a sigmoid of feature 0
    y = feats.targets["fascial_target"].reshape(-1).numpy()
    assert roc_auc(y, out["fascial_logit"].reshape(-1).numpy()) > 0.99
    # the same as scikit-learn's on the standardised features
    z = ((flat - flat.mean(0)) / flat.std(0)).numpy()
    ref = LogisticRegression(C=100.0, max_iter=2000).fit(z, y)
    np.testing.assert_allclose(head.readout.weight[1].detach().numpy(), ref.coef_[0], rtol=1e-3, atol=1e-3)
    # the readers' call on subcutaneous edema: both readers (z > 1); a 1-1 split is not a finding
    z2 = ((feats.x[..., 2] - 3.0) / 0.1).reshape(-1)
    p = torch.sigmoid(out["subcut_logit"]).reshape(-1)
    assert roc_auc((z2 > 1).int().numpy(), p.numpy()) > 0.99
    assert float(p[(z2 > 0.2) & (z2 < 0.8)].max()) < 0.5
    # a stronger penalty shrinks the weights
    strong = GradingHead(5, 5)
    fit_readouts(strong, feats, c=0.001)
    assert float(strong.readout.weight.abs().sum()) < float(head.readout.weight.abs().sum())


def test_readout_columns_are_the_named_features_a_readout_reads():
    from nxp2seg.models.grading_fit import readout_columns

    names = ["region/q", "rim/q", "rim/decoder0", "fat_rim/q", "sector/q", "case/x"]
    assert readout_columns(names, 6, ["rim/*", "fat_rim/*"], ["*/decoder*"]).tolist() == [
        False, True, False, True, False, False]
    assert readout_columns(names, 6, [], ()).all() and readout_columns(None, 6, ["rim/*"]).all()
    with pytest.raises(ValueError, match="no feature name matches"):
        readout_columns(names, 6, ["bone/*"])
    with pytest.raises(ValueError, match="5 names for 6 features"):
        readout_columns(names[:5], 6, None)


def test_readout_c_auto_is_the_best_out_of_fold_score_over_subjects():
    """``readout_c: auto`` takes, per read-out, the grid value whose out-of-fold predictions over
    folds of the training subjects score best -- the same scores scikit-learn's own
    ``cross_val_predict`` and ``roc_auc_score`` give on those folds -- and a read-out reads only
    its named features (the others weigh 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    from nxp2seg.grading import readers_flag
    from nxp2seg.models.grading_fit import fit_readouts, subject_folds
    from nxp2seg.models.grading_head import GradingHead

    feats = _synthetic_features()
    g = torch.Generator().manual_seed(3)
    feats.x[..., 4] += 2.0 * torch.randn(feats.x.shape[:2], generator=g)  # noise the flag must not read
    names = ["a", "rim/b", "c", "rim/decoder0", "d"]
    grid = (0.001, 0.1, 10.0)
    head = GradingHead(5, 5)
    report = fit_readouts(head, feats, "auto", grid=grid, features={"fascial": ["rim/*"]},
                          exclude={"fascial": ["*/decoder*"]}, names=names, folds=4, seed=0)
    w = head.readout.weight.detach()
    assert w[1].nonzero().flatten().tolist() == [1]  # fascial reads rim/b alone
    assert (w[0] != 0).all() and report["fascial"]["features"] == 1 and report["fat"]["features"] == 5
    # the reference: scikit-learn's out-of-fold predictions on the same subject folds
    fold = np.zeros(len(feats), dtype=int)
    for f, held in enumerate(subject_folds(feats.subject_ids, 4, 0)):
        fold[held] = f
    fold = np.repeat(fold, feats.x.shape[1])
    flat = feats.x.reshape(-1, 5).double().numpy()
    z = (flat - flat.mean(0)) / flat.std(0, ddof=1)
    y = readers_flag(feats.targets["fascial_target"].reshape(-1).numpy())
    ref = {}
    for c in grid:
        p = cross_val_predict(LogisticRegression(C=c, max_iter=2000), z[:, [1]], y, cv=PredefinedSplit(fold),
                              method="predict_proba")[:, 1]
        ref[c] = roc_auc_score(y, p)
    assert report["fascial"]["cv"] == pytest.approx(ref, abs=1e-6)
    assert report["fascial"]["C"] == max(ref, key=ref.get)
    # one subject: nothing to cross-validate, the middle of the grid
    one = feats.subset(range(2))
    assert fit_readouts(GradingHead(5, 5), one, "auto", grid=grid, names=names)["fat"]["C"] == 0.1


def test_ensemble_members_train_apart_by_lightning_and_grade_together():
    from nxp2seg.models.grading_fit import fit_head
    from nxp2seg.models.grading_head import GradingHead
    from nxp2seg.models.grading_spec import FitSpec

    feats = _synthetic_features()
    feats.targets["edema_target"] = 5 * torch.sigmoid(feats.x[..., 3] - 3.0)
    torch.manual_seed(0)
    head = GradingHead(5, 5, ensemble=3)
    fit = fit_head(head, feats, None, FitSpec(epochs=5))
    assert fit["epochs"] == [5, 5, 5] and head.active_member is None
    with torch.no_grad():
        each = []
        for i in range(3):
            head.active_member = i
            each.append(head(feats.x, feats.station_index)["edema"])
        head.active_member = None
        together = head(feats.x, feats.station_index)["edema"]
    assert not torch.allclose(each[0], each[1])  # own initialisation and seed
    assert torch.allclose(together, torch.stack(each).mean(0), atol=1e-6)
    # seeded: the same fit again gives the same head
    torch.manual_seed(0)
    again = GradingHead(5, 5, ensemble=3)
    fit_head(again, feats, None, FitSpec(epochs=5))
    with torch.no_grad():
        assert torch.allclose(again(feats.x, feats.station_index)["edema"], together)


def test_early_stopping_keeps_the_best_validation_epoch():
    from nxp2seg.models.grading_fit import fit_mlp
    from nxp2seg.models.grading_head import GradingHead
    from nxp2seg.models.grading_spec import FitSpec

    train, val = _synthetic_features(seed=0), _synthetic_features(seed=1)
    for f in (train, val):
        f.targets["edema_target"] = 5 * torch.sigmoid(f.x[..., 3] - 3.0)
    val.targets["edema_target"] = 5.0 - val.targets["edema_target"]  # validation disagrees: stops early
    torch.manual_seed(0)
    head = GradingHead(5, 5)
    fit = fit_mlp(head, train, val, FitSpec(epochs=40, patience=3, lr=0.01))
    assert fit["epochs"][0] < 40 and fit["best_epoch"][0] <= fit["epochs"][0] - 3


def test_cross_fitting_predicts_each_subject_with_a_head_that_never_saw_it():
    from nxp2seg.models.grading_fit import cross_fit, head_outputs, subject_folds
    from nxp2seg.models.grading_head import GradingHead
    from nxp2seg.models.grading_spec import FitSpec

    feats = _synthetic_features()
    folds = subject_folds(feats.subject_ids, 4)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(feats)))
    for held in folds:  # whole subjects per fold
        inside = {feats.subject_ids[i] for i in held}
        assert not inside & {feats.subject_ids[i] for i in set(range(len(feats))) - set(held)}
    from nxp2seg.models.grading_fit import fit_head

    torch.manual_seed(0)
    head = GradingHead(5, 5)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    oof = cross_fit(head, feats, FitSpec(epochs=2, folds=4))
    assert oof["fascial_logit"].shape == (40, 6)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())  # fitted copies only
    fit_head(head, feats, None, FitSpec(epochs=2))
    assert not torch.allclose(head_outputs(head, feats)["fascial_logit"], oof["fascial_logit"])


# -- operating points ---------------------------------------------------------------


def test_flag_thresholds_by_hand():
    from nxp2seg.models.grading_operating import flag_threshold, sensitivity_specificity

    prob = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.35, 0.7, 0.8, 0.9])
    share = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0.5])  # 0.5: a split vote, not a finding
    # youden: at 0.35 sensitivity 3/3, specificity 4/7 (0.4, 0.6, 0.9 false): 1.571; at 0.7: 2/3 and
    # 6/7: 1.524; the threshold goes midway to the next lower probability, 0.3
    thr, rep = flag_threshold(prob, share, "youden")
    assert rep["n_positive"] == 3 and rep["n_negative"] == 7
    assert thr == pytest.approx(0.325) and rep["sensitivity"] == 1.0 and rep["specificity"] == pytest.approx(4 / 7)
    # specificity >= 0.7 first reached at 0.6 (5/7), sensitivity 2/3 there; midway to 0.4
    thr, rep = flag_threshold(prob, share, "specificity", min_specificity=0.7)
    assert thr == pytest.approx(0.5) and rep["sensitivity"] == pytest.approx(2 / 3)
    assert rep["specificity"] == pytest.approx(5 / 7)
    thr, rep = flag_threshold(prob, share, "fixed", fixed=0.5)
    assert thr == 0.5 and rep["sensitivity"] == pytest.approx(2 / 3)
    thr, rep = flag_threshold(prob, np.zeros_like(share), "youden")  # one class: the fixed threshold
    assert thr == 0.5 and "fallback" in rep
    assert sensitivity_specificity([1, 1, 0, 0], [1, 0, 0, 1]) == (0.5, 0.5)


def test_kappa_cuts_undo_a_shrunk_prediction():
    from nxp2seg.models.grading_operating import kappa_cuts
    from nxp2seg.stats.agreement import cohen_kappa

    g = np.random.default_rng(0)
    truth = g.integers(0, 6, 300)
    pred = 1.0 + 0.6 * truth + 0.2 * g.standard_normal(300)  # shrunk towards the middle
    labels = np.arange(6)
    rounded = np.clip(np.floor(pred + 0.5), 0, 5)
    cuts = kappa_cuts(pred, truth, 6)
    assert np.all(np.diff(cuts) > 0) and len(cuts) == 5
    tuned = (pred[:, None] >= cuts[None]).sum(1)
    assert cohen_kappa(tuned, truth, weights="quadratic", labels=labels) > 0.95
    assert cohen_kappa(rounded, truth, weights="quadratic", labels=labels) < 0.9


def test_edema_and_fat_grades_have_their_own_rule():
    """``grades`` sets the edema cut-points, ``fat_grades`` the fat ones (default: rounding for both)."""
    from nxp2seg.data.schema import get_grade_scale
    from nxp2seg.models.grading_operating import choose_operating_points, kappa_cuts
    from nxp2seg.models.grading_spec import OperatingSpec

    g = np.random.default_rng(2)
    truth_fat = g.integers(0, 5, (50, 6)).astype(float)
    truth_edema = g.integers(0, 6, (50, 6)).astype(float)
    rows = {"edema": 1.0 + 0.6 * truth_edema, "edema_target": truth_edema,
            "fat": 0.5 + 0.5 * truth_fat + 0.1 * g.standard_normal((50, 6)), "fat_target": truth_fat,
            "fascial_prob": g.random((50, 6)), "fascial_target": g.integers(0, 2, (50, 6)).astype(float),
            "subcut_prob": g.random((50, 6)), "subcut_target": g.integers(0, 2, (50, 6)).astype(float),
            "pattern_logp": np.log(np.full((50, 4), 0.25)), "pattern_index": np.zeros(50)}
    scale = get_grade_scale("beltrame6")
    assert OperatingSpec().grades == "round" and OperatingSpec().fat_grades == "round"
    assert not {"edema_cuts", "fat_cuts"} & set(choose_operating_points(rows, OperatingSpec(), scale)[0])
    points, report = choose_operating_points(rows, OperatingSpec(fat_grades="kappa"), scale)
    assert "edema_cuts" not in points and report["grades"]["fat_rule"] == "kappa"
    np.testing.assert_allclose(points["fat_cuts"], kappa_cuts(rows["fat"], truth_fat, 5))
    points, _ = choose_operating_points(rows, OperatingSpec(grades="kappa", fat_grades="round"), scale)
    assert "fat_cuts" not in points and len(points["edema_cuts"]) == 5
    with pytest.raises(ValueError, match="fat_grades"):
        OperatingSpec(fat_grades="median")


def test_pattern_offsets_correct_a_biased_argmax():
    from nxp2seg.models.grading_operating import pattern_offsets

    g = np.random.default_rng(1)
    index = g.integers(0, 4, 200)
    logp = np.log(np.full((200, 4), 0.1))
    logp[np.arange(200), index] = np.log(0.35)
    logp[:, 1] += 1.5  # the head over-calls "patchy"
    off = pattern_offsets(logp, index)
    assert off[0] == 0.0 and off[1] < -1.0
    assert ((logp + off).argmax(1) == index).mean() == 1.0


# -- grade scales and label levels -------------------------------------------------


def test_muscle_level_slots_pad_the_smaller_station():
    from helpers_muscle import per_muscle_schema

    from nxp2seg.data.regions import (
        lr_permutation,
        n_region_slots,
        region_membership,
        slot_counts,
        subcut_membership,
    )
    from nxp2seg.data.schema import get_grade_scale
    from nxp2seg.grading.tables import case_targets

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
        cfg = compose_train(_overrides(cohort, root, "grading.fit.perturb=0", "grading.fit.epochs=3"))
        assert "csv" in cfg.logger and "model_checkpoint" in cfg.callbacks  # the defaults
        _, objects = train(cfg)
    finally:
        torch.set_num_threads(n)
    return objects


def test_the_cohort_scale_and_muscle_regions_reach_the_staged_head(muscle_run):
    from nxp2seg.models.bundle import load_bundle

    dm = muscle_run["datamodule"]
    assert dm.grade_scale.name == "extent4" and muscle_run["graded"].grade_scale.max_grade == 3
    assert muscle_run["graded"].grader.head.max_grade == 3.0 and muscle_run["graded"].grader.head.n_regions == 26
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
