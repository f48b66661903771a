"""Write a complete phantom cohort in the dataset contract.

Order of work: draw every subject's disease (tables only), the two readers'
grades and patterns, and the clinical table; then render each case (one
station of one subject) in a worker process, each from its own random stream
so the bytes do not depend on the number of workers; write tables; write
``dataset.json`` last, so a folder with one is complete.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data.cohort import CHANNELS, DIXON_CHANNELS, CohortError, CohortWriter, DatasetDescription
from nxp2seg.data.schema import (
    MUSCLES,
    SIDES,
    STATIONS,
    default_compartment_schema,
    default_muscle_schema,
    get_grade_scale,
)
from nxp2seg.io import make_nifti, save_nifti, write_csv
from nxp2seg.phantom.acquisition import Grid, apply_scanner, apply_scanner_dixon, make_grid, render_grid, rotation_matrix
from nxp2seg.phantom.anatomy import StationAnatomy, Tissue, muscle_label_table, sample_leg_params
from nxp2seg.phantom.clinical import simulate_clinical
from nxp2seg.phantom.config import PhantomConfig, make_config
from nxp2seg.phantom.disease import SubjectTruth, sample_subjects, truth_tables
from nxp2seg.phantom.fields import SmoothField
from nxp2seg.phantom.muscles import muscle_truth_table, sample_subjects_by_muscle
from nxp2seg.phantom.pelvis import sample_pelvis
from nxp2seg.phantom.readers import simulate_readers
from nxp2seg.phantom.render import CaseRenderer, sample_contrast

__all__ = ["generate_cohort", "render_case", "CaseImages"]


@dataclass
class CaseImages:
    """One rendered case: images, labels and truth maps with their metadata."""

    case_id: str
    t1: Any  # nibabel images: channel 0 (T1, or the Dixon fat image)
    stir: Any  # channel 1 (STIR, or the Dixon water image)
    label_compartment: Any
    label_muscle: Any
    edema: Any
    fat: Any
    meta: dict[str, Any]
    region_stats: list[dict[str, Any]]


def _habitus(subject: SubjectTruth, rng: np.random.Generator) -> dict[str, float]:
    female = subject.sex == "F"
    scale = rng.uniform(0.88, 1.0) if female else rng.uniform(0.97, 1.1)
    fat = (10.0 if female else 5.0) + (subject.bmi - 22.0) * (1.6 if female else 1.2) + rng.normal(0, 2.5)
    return {"scale": float(scale), "fat": float(np.clip(fat, 5.0, 35.0))}


def _case_rng(seed: int, subject_index: int, station: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, subject_index, STATIONS.index(station), 0x9E37]))


def _contrast_rng(seed: int, subject_index: int, station: str) -> np.random.Generator:
    """The Dixon contrast stream: anatomy and disease stay those of the T1/STIR cohort of the same seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, subject_index, STATIONS.index(station), 0xD1C0]))


def render_case(cfg: PhantomConfig, subject: SubjectTruth, subject_index: int, station: str) -> CaseImages:
    """Render one station of one subject: the two channels (T1 and STIR, or Dixon
    fat and water), labels and truth maps."""
    acq = cfg.acquisition
    dixon = cfg.sequence == "dixon"
    rng = _case_rng(cfg.seed, subject_index, station)
    truth = subject.stations[station]
    hab = _habitus(subject, rng)
    legs = {side: sample_leg_params(station, rng, hab) for side in SIDES}
    # slab and leg placement (world RAS+: patient's right at +x); every draw beyond the
    # default geometry's happens only when its option is set, so default cohorts keep their bytes
    thickness = rng.uniform(*acq.slice_thickness)
    step = rng.uniform(*acq.slice_spacing) if acq.slice_spacing else thickness  # between slice centres
    n_slices = int(rng.integers(acq.slice_count[0], acq.slice_count[1] + 1)) if acq.slice_count else acq.slices
    n_pelvis = 0
    if station == "thigh" and acq.pelvis_slices[1] > 0:
        n_pelvis = min(int(rng.integers(acq.pelvis_slices[0], acq.pelvis_slices[1] + 1)), n_slices - 2)
    length = step * (n_slices - n_pelvis) if (acq.slice_spacing or acq.slice_count or n_pelvis) else thickness * acq.slices
    gap = rng.uniform(*(acq.leg_gap_thigh if station == "thigh" else acq.leg_gap_calf))
    table = np.array([rng.normal(0, 5), rng.normal(0, 5), rng.uniform(-40, 40)])
    centres = {}
    for side, sgn in (("right", 1.0), ("left", -1.0)):
        p = legs[side]
        half = p.a + p.fat + p.skin
        centres[side] = (float(table[0] + sgn * (half + gap / 2)), float(table[1] + rng.uniform(-4, 4)))
    z_top = float(table[2] + n_slices * step / 2 - n_pelvis * step) if n_pelvis else float(table[2] + length / 2)
    anatomy = StationAnatomy(station, legs, centres, z_top=z_top, length=float(length))
    if n_pelvis:
        anatomy.pelvis = sample_pelvis(rng, centres, legs)
    one_leg = None
    if acq.one_leg_probability > 0 and rng.random() < acq.one_leg_probability:
        one_leg = str(rng.choice(SIDES))  # only this leg is in the field of view (centred, sized for it)
        table[:2] = centres[one_leg]
        anatomy.absent = SIDES[1 - SIDES.index(one_leg)]
        anatomy.pelvis = None
    # field of view and grids
    hx, hy = anatomy.half_extent((table[0], table[1]), sides=(one_leg,) if one_leg else SIDES)
    ni, nj = acq.matrix
    min_sp = acq.min_spacing_thigh if station == "thigh" else acq.min_spacing_calf
    pad = 5.0 + acq.positioning_mm
    need = max(2 * (hx + pad) / ni, 2 * (hy + pad) / nj) * rng.uniform(*acq.fov_margin)
    spacing = max(need, min_sp)
    shift = rng.uniform(-1, 1, 2) * acq.positioning_mm
    centre = np.array([table[0] + shift[0], table[1] + shift[1], table[2]])
    axcodes = "LPS" if rng.random() < acq.lps_probability else "RAS"
    rot = None
    oblique = 0.0
    if rng.random() < acq.oblique_probability:
        oblique = float(rng.uniform(1.0, acq.oblique_max_deg))
        rot = rotation_matrix(rng.normal(size=3), np.deg2rad(oblique))
    t1_grid = make_grid(centre, (ni, nj, n_slices), (spacing, spacing, step), axcodes, rot)
    stir_sp, stir_shape, stir_centre, stir_ax = spacing, (ni, nj), centre.copy(), axcodes
    coarse = rng.random() < acq.stir_coarse_probability
    if coarse:
        f = rng.uniform(*acq.stir_coarse_factor)
        stir_sp = spacing * f
        stir_shape = (int(round(ni / f)), int(round(nj / f)))
    shifted = rng.random() < acq.stir_shift_probability
    if shifted:
        stir_centre[:2] += rng.uniform(-1, 1, 2) * acq.stir_shift_mm
    if rng.random() < acq.stir_own_axcodes_probability:
        stir_ax = "RAS" if axcodes == "LPS" else "LPS"
    stir_grid = make_grid(stir_centre, (*stir_shape, n_slices), (stir_sp, stir_sp, step), stir_ax, rot)
    same_grid = stir_grid.shape == t1_grid.shape and np.allclose(stir_grid.affine, t1_grid.affine)
    corners = np.concatenate([t1_grid.corners(), stir_grid.corners()], axis=1)
    box = (corners.min(axis=1) - 10, corners.max(axis=1) + 10)
    if dixon:  # fat and water come from the same echoes, on one grid; the draws and the box above
        # are the T1/STIR case's, so anatomy and disease are those of the T1/STIR cohort of the seed
        stir_grid, stir_sp, stir_ax, coarse, shifted = t1_grid, spacing, axcodes, False, False
    if acq.deformation_mm > 0:
        anatomy.displacement = tuple(
            _ScaledField(SmoothField(rng, *box, acq.deformation_corr_mm), acq.deformation_mm) for _ in range(3)
        )
    crng = rng
    if dixon:  # the T1/STIR draws still come off the case's stream, so what follows stays the same
        sample_contrast(rng, cfg.contrast, "t1_stir")
        crng = _contrast_rng(cfg.seed, subject_index, station)
    contrast = sample_contrast(crng, cfg.contrast, cfg.sequence, with_fluid=bool(n_pelvis))
    regions = [truth.regions[name] for name in _station_regions(station)]
    probe = _probe_points(t1_grid, max(1, acq.supersample // 2))
    renderer = CaseRenderer(anatomy, regions, contrast, box, probe, rng, contrast_rng=crng)

    comp_schema = default_compartment_schema()
    region_values = np.array([comp_schema.labels[n] for n in _station_regions(station)], np.uint8)
    subcut = np.array([comp_schema.labels["subcutaneous_right"], comp_schema.labels["subcutaneous_left"]], np.uint8)
    bone_c = comp_schema.labels["bone"]
    mus_schema = default_muscle_schema()
    mus_lut = muscle_label_table(station, mus_schema.labels)
    subcut_m = np.array([mus_schema.labels["subcutaneous_right"], mus_schema.labels["subcutaneous_left"]], np.uint8)
    bone_m = mus_schema.labels["bone"]
    stats = np.zeros((6, 3))  # muscle sub-samples, edematous sub-samples, fat sum
    mstats = np.zeros((6 * 6, 2))  # per (region, muscle index): sub-samples, edematous ones

    def fn(x, y, z):
        res = renderer.render(x, y, z)
        tissue, region, side = res["tissue"], res["region"], res["side"]
        inside = (region >= 0) & (res["muscle"] >= 0)
        lc = np.zeros(x.shape, np.uint8)
        lm = np.zeros(x.shape, np.uint8)
        outer = ((tissue == Tissue.SKIN) | (tissue == Tissue.FAT) | ((tissue == Tissue.VESSEL) & ~inside)) & ~res["deep_fat"]
        lc[outer] = subcut[side[outer]]
        lm[outer] = subcut_m[side[outer]]
        lc[inside] = region_values[region[inside]]
        lm[inside] = mus_lut[side[inside], res["compartment"][inside], res["muscle"][inside]]
        bone = (tissue == Tissue.CORTEX) | (tissue == Tissue.MARROW)
        lc[bone] = bone_c
        lm[bone] = bone_m
        res["label_c"], res["label_m"] = lc, lm
        mus = (tissue == Tissue.MUSCLE) & (region >= 0)  # graded muscle (not the pelvis's)
        r = region[mus]
        stats[:, 0] += np.bincount(r, minlength=6)[:6]
        stats[:, 1] += np.bincount(r, weights=res["edema"][mus] > 0.5, minlength=6)[:6]
        stats[:, 2] += np.bincount(r, weights=res["fat"][mus], minlength=6)[:6]
        rm = r * 6 + np.clip(res["muscle"][mus], 0, 5)
        mstats[:, 0] += np.bincount(rm, minlength=36)[:36]
        mstats[:, 1] += np.bincount(rm, weights=res["edema"][mus] > 0.5, minlength=36)[:36]
        return res

    ss = (acq.supersample, acq.supersample, acq.subslices)
    fields = {"c0": np.float32, "edema": np.float32, "fat": np.float32}
    if same_grid or dixon:
        fields["c1"] = np.float32
    slab = min(thickness / step, 1.0)
    t1_out = render_grid(t1_grid, fn, fields, ss, labels=("label_c", "label_m"), slab=slab)
    if same_grid or dixon:
        stir_sig = t1_out["c1"]
    else:
        stir_sig = render_grid(stir_grid, lambda x, y, z: renderer.render(x, y, z), {"c1": np.float32}, ss, slab=slab)["c1"]

    bias = SmoothField(rng, *box, 120.0)
    fov_half = np.array([ni * spacing / 2, nj * spacing / 2])
    gains = np.exp(rng.uniform(np.log(acq.gain[0]), np.log(acq.gain[1]), 2))
    snrs = rng.uniform(*acq.snr, 2)
    if dixon:
        t1_img, stir_img = apply_scanner_dixon(
            t1_out["c0"], stir_sig, t1_grid, rng, bias, acq.bias, fov_half, centre, gains[0], snrs[0]
        )
        gains[1], snrs[1] = gains[0], snrs[0]
    else:
        t1_img = apply_scanner(t1_out["c0"], t1_grid, rng, bias, acq.bias, fov_half, centre, gains[0], snrs[0], acq.contrast_jitter)
        stir_img = apply_scanner(stir_sig, stir_grid, rng, bias, acq.bias, fov_half, centre, gains[1], snrs[1], acq.contrast_jitter)

    region_stats = []
    for r, name in enumerate(_station_regions(station)):
        n = max(stats[r, 0], 1.0)
        region_stats.append(
            {
                "case_id": truth.case_id,
                "region": name,
                "measured_edema_fraction": stats[r, 1] / n,
                "measured_fat_fraction": stats[r, 2] / n,
            }
        )
    if truth.muscles is not None:  # muscle-level cohorts: the edema fraction of each muscle
        for mt in truth.muscles.values():
            r = _station_regions(station).index(f"{station}_{mt.compartment}_{mt.side}")
            k = r * 6 + MUSCLES[station][mt.compartment].index(mt.muscle)
            region_stats.append({"case_id": truth.case_id, "region": mt.region,
                                 "measured_edema_fraction": mstats[k, 1] / max(mstats[k, 0], 1.0),
                                 "measured_fat_fraction": np.nan})
    meta = {
        "case_id": truth.case_id,
        "subject_id": subject.subject_id,
        "station": station,
        "t1_axcodes": axcodes,
        "stir_axcodes": stir_ax,
        "oblique_deg": round(oblique, 3),
        "t1_spacing_mm": round(float(spacing), 4),
        "stir_spacing_mm": round(float(stir_sp), 4),
        "slice_thickness_mm": round(float(thickness), 4),
        "stir_coarse": bool(coarse),
        "stir_shifted": bool(shifted),
        "gain_t1": round(float(gains[0]), 2),
        "gain_stir": round(float(gains[1]), 2),
        "snr_t1": round(float(snrs[0]), 2),
        "snr_stir": round(float(snrs[1]), 2),
        "fat_mm": round(hab["fat"], 2),
        **({"slice_spacing_mm": round(float(step), 4), "slices": n_slices} if acq.slice_spacing or acq.slice_count else {}),
        **({"pelvis_slices": n_pelvis} if acq.pelvis_slices[1] > 0 else {}),
        **({"one_leg": one_leg or ""} if acq.one_leg_probability > 0 else {}),
    }
    return CaseImages(
        case_id=truth.case_id,
        t1=make_nifti(t1_img, t1_grid.affine),
        stir=make_nifti(stir_img, stir_grid.affine),
        label_compartment=make_nifti(t1_out["label_c"], t1_grid.affine),
        label_muscle=make_nifti(t1_out["label_m"], t1_grid.affine),
        edema=make_nifti((t1_out["edema"] >= 0.5).astype(np.uint8), t1_grid.affine),
        fat=make_nifti(np.rint(np.clip(t1_out["fat"], 0, 1) * 100).astype(np.uint8), t1_grid.affine),
        meta=meta,
        region_stats=region_stats,
    )


def _probe_points(grid: Grid, factor: int) -> np.ndarray:
    """World points on the grid, ``factor`` per voxel in-plane, for planning the disease."""
    ni, nj, nk = grid.shape
    ii = (np.arange(ni * factor) + 0.5) / factor - 0.5
    jj = (np.arange(nj * factor) + 0.5) / factor - 0.5
    I, J, K = np.meshgrid(ii, jj, np.arange(nk, dtype=float), indexing="ij")
    return np.stack([c.ravel() for c in grid.world(I, J, K)])


class _ScaledField:
    def __init__(self, f: SmoothField, scale: float):
        self.f, self.scale = f, scale

    def __call__(self, x, y, z):
        return self.f(x, y, z) * self.scale


def _station_regions(station: str) -> list[str]:
    return default_compartment_schema().region_names(station)


def _render_and_write(args) -> tuple[dict, list[dict]]:
    cfg, subject, index, station, root = args
    case = render_case(cfg, subject, index, station)
    root = Path(root)
    ending = ".nii.gz"
    save_nifti(case.t1, root / "imagesTr" / f"{case.case_id}_0000{ending}")
    save_nifti(case.stir, root / "imagesTr" / f"{case.case_id}_0001{ending}")
    if cfg.label_level == "muscle":
        save_nifti(case.label_muscle, root / "labelsTr" / f"{case.case_id}{ending}")
        save_nifti(case.label_compartment, root / "truth" / "labels_compartment" / f"{case.case_id}{ending}")
    else:
        save_nifti(case.label_compartment, root / "labelsTr" / f"{case.case_id}{ending}")
        save_nifti(case.label_muscle, root / "truth" / "labels_muscle" / f"{case.case_id}{ending}")
    save_nifti(case.edema, root / "truth" / "edema" / f"{case.case_id}{ending}")
    save_nifti(case.fat, root / "truth" / "fat_percent" / f"{case.case_id}{ending}")
    return case.meta, case.region_stats


def _split(subjects: list[SubjectTruth], cfg: PhantomConfig) -> dict[str, str]:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5917]))
    n_test = int(round(cfg.test_fraction * len(subjects)))
    order = rng.permutation(len(subjects))
    test = {subjects[i].subject_id for i in order[:n_test]}
    return {s.subject_id: ("test" if s.subject_id in test else "train") for s in subjects}


def generate_cohort(
    out: str | os.PathLike | None = None,
    subjects: int | None = None,
    preset: str | None = None,
    seed: int | None = None,
    overwrite: bool | None = None,
    *,
    config: PhantomConfig | None = None,
    progress: bool = False,
    **overrides: Any,
) -> Path:
    """Generate a phantom cohort and return its folder.

    Args:
        out: target folder (created; must not already hold a cohort unless ``overwrite``).
        subjects: number of subjects (each gives a thigh and a calf case).
        preset: ``tiny`` | ``small`` | ``full``.
        seed: random seed; same seed and config give the same bytes.
        config: a full :class:`PhantomConfig`; the other arguments override it.
        progress: show a progress bar.
        **overrides: nested config overrides, e.g. ``acquisition={"snr": (8, 15)}``.
    """
    top = {k: v for k, v in dict(out=out, subjects=subjects, preset=preset, seed=seed, overwrite=overwrite).items() if v is not None}
    if config is None:
        config = make_config({**top, **overrides})
    elif top or overrides:
        from nxp2seg.phantom.config import _apply

        config = _apply(config, {**top, **overrides})
    cfg = config
    if cfg.out is None:
        raise ValueError("phantom: give an output folder, e.g. out=/tmp/cohort")
    if cfg.label_level not in ("compartment", "muscle"):
        raise ValueError(f"phantom: label_level must be 'compartment' or 'muscle', not {cfg.label_level!r}")
    get_grade_scale(cfg.grade_scale)
    grade_level = cfg.grade_level or cfg.label_level
    if grade_level not in ("compartment", "muscle"):
        raise ValueError(f"phantom: grade_level must be 'compartment' or 'muscle', not {grade_level!r}")
    if grade_level == "muscle" and cfg.label_level != "muscle":
        raise ValueError("phantom: grade_level=muscle needs label_level=muscle (readers grade the "
                         "muscles the masks delineate)")
    by_muscle = grade_level == "muscle" or bool(cfg.disease.groups)
    root = Path(cfg.out)
    if (root / "dataset.json").exists() and not cfg.overwrite:
        raise CohortError(f"{root} already holds a cohort; choose another folder or pass overwrite=true")
    if root.exists() and cfg.overwrite:
        for sub in ("imagesTr", "labelsTr", "truth"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / "dataset.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    draw = sample_subjects_by_muscle if by_muscle else sample_subjects
    subjects_truth = draw(cfg.subjects, cfg.seed, cfg.disease)
    grades, patterns = simulate_readers(subjects_truth, cfg.seed, cfg.readers,
                                        grade_scale=cfg.grade_scale, level=grade_level)
    clinical = simulate_clinical(subjects_truth, cfg.seed, cfg.clinical)
    region_df, station_df, subject_df = truth_tables(subjects_truth)
    split = _split(subjects_truth, cfg)

    schema = (default_muscle_schema(graded=grade_level) if cfg.label_level == "muscle"
              else default_compartment_schema())
    dataset = DatasetDescription(
        schema=schema,
        channel_names=dict(DIXON_CHANNELS if cfg.sequence == "dixon" else CHANNELS),
        grade_scale=get_grade_scale(cfg.grade_scale),
        raters=list(cfg.readers.raters),
        name="nxp2seg phantom",
        description=(
            f"Synthetic lower-limb myositis MRI (nxp2seg phantom): {cfg.subjects} subjects, "
            f"preset {cfg.preset}, seed {cfg.seed}"
        ),
        extra={"phantom": {"preset": cfg.preset, "seed": cfg.seed, "subjects": cfg.subjects,
                           **({"sequence": cfg.sequence} if cfg.sequence != "t1_stir" else {})}},
    )
    writer = CohortWriter(root, dataset, overwrite=cfg.overwrite)
    jobs = [
        (cfg, s, i, station, str(root))
        for i, s in enumerate(subjects_truth)
        for station in STATIONS
    ]
    workers = cfg.workers or min(os.cpu_count() or 1, len(jobs))
    metas, stats = [], []
    results = _run_jobs(jobs, workers, progress)
    for meta, st in results:
        metas.append(meta)
        stats.extend(st)

    cases = pd.DataFrame(
        [
            {"case_id": s.stations[st].case_id, "subject_id": s.subject_id, "station": st, "split": split[s.subject_id]}
            for s in subjects_truth
            for st in STATIONS
        ]
    )
    writer.write_tables(cases, grades, patterns, clinical)
    truth = root / "truth"
    measured = pd.DataFrame(stats)
    region_df = region_df.merge(measured, on=["case_id", "region"], how="left")
    write_csv(region_df, truth / "grades.csv")
    if by_muscle:  # each muscle's truth (extent4 from its fraction) and its rendered fraction
        muscle_df = muscle_truth_table(subjects_truth).merge(
            measured.drop(columns="measured_fat_fraction"), on=["case_id", "region"], how="left")
        write_csv(muscle_df, truth / "grades_muscle.csv")
    write_csv(station_df, truth / "patterns.csv")
    write_csv(subject_df, truth / "subjects.csv")
    write_csv(pd.DataFrame(metas).sort_values("case_id"), truth / "acquisition.csv")
    (truth / "config.json").write_text(_config_json(cfg))
    writer.finish(num_training=len(jobs))
    if progress:
        from rich.console import Console

        Console(stderr=True).print(
            f"[green]phantom cohort[/green] {root}: {cfg.subjects} subjects, {len(jobs)} cases, "
            f"preset {cfg.preset}, {time.perf_counter() - t0:.1f} s"
        )
    return root


def _run_jobs(jobs, workers: int, progress: bool):
    if workers <= 1:
        it = map(_render_and_write, jobs)
        return list(_progress(it, len(jobs), progress))
    import multiprocessing as mp

    ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(_progress(pool.map(_render_and_write, jobs), len(jobs), progress))


def _progress(it, total: int, show: bool):
    if not show:
        yield from it
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("rendering cases", total=total)
        for item in it:
            bar.advance(task)
            yield item


def _config_json(cfg: PhantomConfig) -> str:
    import json

    d = asdict(cfg)
    for k in ("out", "workers", "overwrite"):  # where and how, not what: keep the bytes comparable
        d.pop(k, None)
    return json.dumps(d, indent=2, default=str) + "\n"
