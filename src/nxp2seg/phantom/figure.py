"""The phantom at a glance: T1 and STIR of thigh and calf, with and without labels.

Rows: a mild (patchy) subject's thigh and calf, then a diffuse subject's.
Columns: T1, STIR, T1 with the compartment labels, STIR with the labels and the
true edema outline. Radiological convention: the patient's right on the
image's left, anterior up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["phantom_figure", "pick_cases"]


def pick_cases(cohort_dir: str | Path) -> dict[str, str]:
    """Choose a mild and a diffuse subject from the cohort's truth tables."""
    root = Path(cohort_dir)
    st = pd.read_csv(root / "truth" / "patterns.csv", dtype={"case_id": str, "subject_id": str})
    thigh = st[st["station"] == "thigh"]
    patchy = thigh[(thigh["pattern"] == "patchy") & (thigh["station_score"] > 0)].sort_values("station_score")
    diffuse = thigh[thigh["pattern"] == "diffuse"].sort_values("station_score", ascending=False)
    mild = patchy.iloc[len(patchy) // 3] if len(patchy) else thigh.sort_values("station_score").iloc[0]
    heavy = diffuse.iloc[0] if len(diffuse) else thigh.sort_values("station_score").iloc[-1]
    return {"mild": str(mild["subject_id"]), "diffuse": str(heavy["subject_id"])}


def _canonical_slice(img, k: int | None = None):
    import nibabel as nib

    can = nib.as_closest_canonical(img)
    data = np.asarray(can.dataobj)
    k = data.shape[2] // 2 if k is None else k
    # radiological: patient's right on the left -> flip the R-increasing axis; anterior up
    return data[::-1, :, k].T, can


def phantom_figure(cohort_dir: str | Path, out_png: str | Path, subjects: dict[str, str] | None = None) -> Path:
    """Draw the phantom figure for a cohort and save it as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from nibabel.processing import resample_from_to

    root = Path(cohort_dir)
    subjects = subjects or pick_cases(root)
    st = pd.read_csv(root / "truth" / "patterns.csv", dtype={"case_id": str, "subject_id": str}).set_index("case_id")
    rows = [(kind, sid, station) for kind, sid in subjects.items() for station in ("thigh", "calf")]
    cmap = ListedColormap(
        ["none", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
         "#e6194b", "#ffe119", "#4363d8", "#f58231", "#bcf60c", "#46f0f0", "#fabebe", "#ffd8b1", "#ffffff"]
        [1:],
    )
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 3.1 * len(rows)), facecolor="black")
    for r, (kind, sid, station) in enumerate(rows):
        case = f"{sid}_{station}"
        t1 = nib.load(root / "imagesTr" / f"{case}_0000.nii.gz")
        stir = nib.load(root / "imagesTr" / f"{case}_0001.nii.gz")
        lab = nib.load(root / "labelsTr" / f"{case}.nii.gz")
        edema = nib.load(root / "truth" / "edema" / f"{case}.nii.gz")
        # STIR onto the T1 grid for display, labels stay on the T1 grid
        stir_on_t1 = resample_from_to(stir, t1, order=1)
        k = t1.shape[2] // 2
        a_t1, _ = _canonical_slice(t1, None)
        a_st, _ = _canonical_slice(stir_on_t1, None)
        a_lab, _ = _canonical_slice(lab, None)
        a_ed, _ = _canonical_slice(edema, None)
        del k
        info = st.loc[case]
        title = f"{kind}: {case} ({info['pattern']}, score {info['station_score']})"
        for c, (img, overlay, name) in enumerate(
            ((a_t1, None, "T1"), (a_st, None, "STIR"), (a_t1, a_lab, "T1 + labels"), (a_st, a_lab, "STIR + labels, edema"))
        ):
            ax = axes[r, c]
            vmax = np.percentile(img[img > 0], 99.5) if (img > 0).any() else 1
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, origin="lower", interpolation="nearest")
            if overlay is not None:
                m = np.ma.masked_equal(overlay, 0)
                ax.imshow(m, cmap=cmap, vmin=1, vmax=15, alpha=0.35, origin="lower", interpolation="nearest")
                if c == 3 and a_ed.any():
                    ax.contour(a_ed, levels=[0.5], colors="yellow", linewidths=0.8, origin="lower")
            ax.set_title(f"{name}" if c else f"{title}\n{name}", color="white", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.01, 0.02, "R", color="white", transform=ax.transAxes, fontsize=9)
            ax.text(0.97, 0.02, "L", color="white", transform=ax.transAxes, fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90, facecolor="black")
    plt.close(fig)
    return out_png
