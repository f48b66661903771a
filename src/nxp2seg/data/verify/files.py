"""Checks of the file layout: every listed case has its images, every file belongs to a case."""

from __future__ import annotations

import re
from collections import defaultdict

from nxp2seg.data.verify.report import Collector

__all__ = ["check_files", "scan_files"]

_CHANNELS = {"0000": "T1", "0001": "STIR"}


def scan_files(ctx: Collector) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Image and label files by case: ``({case: {"T1"|"STIR": rel}}, {case: rel})``."""
    ending = ctx.desc.file_ending
    images: dict[str, dict[str, str]] = defaultdict(dict)
    labels: dict[str, str] = {}
    for folder in ("imagesTr", "labelsTr"):
        if not (ctx.root / folder).is_dir():
            if folder == "imagesTr":
                ctx.add("folder_missing", None, folder, "no imagesTr folder: no images")
            continue
        try:
            entries = sorted((ctx.root / folder).iterdir())
        except OSError as e:
            ctx.add("folder_missing", None, folder, f"cannot be listed ({e})")
            continue
        ctx.images_listed |= folder == "imagesTr"
        for p in entries:
            rel, name = f"{folder}/{p.name}", p.name
            if name.startswith("."):  # .DS_Store and the like; a .part is an interrupted write
                if name.endswith(".part"):
                    msg = "partial file left by an interrupted write: delete it"
                    ctx.add("stray_file", None, rel, msg, warning=True)
                continue
            if not p.is_file() or not name.endswith(ending):
                nifti = p.is_file() and name.endswith((".nii", ".nii.gz"))
                msg = f"not an image of the contract: only images belong in {folder}"
                if nifti:
                    msg = f"file ending is not dataset.json file_ending {ending!r}"
                ctx.add("stray_file", None, rel, msg, warning=not nifti)
                continue
            stem = name[: -len(ending)]
            if folder == "labelsTr":
                labels[stem] = rel
                continue
            m = re.match(r"^(?P<case>.+)_(?P<ch>\d{4})$", stem)
            if m and m["ch"] in _CHANNELS:
                images[m["case"]][_CHANNELS[m["ch"]]] = rel
            elif m:
                msg = f"channel _{m['ch']} is not in channel_names (0 = T1, 1 = STIR)"
                ctx.add("stray_file", m["case"], rel, msg)
            else:
                ctx.add(
                    "stray_file", None, rel, "no channel suffix _0000 (T1) or _0001 (STIR)"
                )
    return images, labels


def check_files(ctx: Collector, images: dict, labels: dict[str, str], listed: list[str]) -> None:
    """Every listed case has both channels; every file belongs to a listed case."""
    ending = ctx.desc.file_ending
    for cid in listed if ctx.images_listed else ():  # no imagesTr: reported once
        have = images.get(cid, {})
        if not have:
            msg = f"case {cid!r} is in cases.csv but has no images"
            ctx.add("case_without_images", cid, f"imagesTr/{cid}_0000{ending}", msg)
        for ch, mod in _CHANNELS.items() if have else ():
            if mod not in have:
                rel = f"imagesTr/{cid}_{ch}{ending}"
                ctx.add("image_missing", cid, rel, f"{mod} image missing", fix=f"add {rel}")
    declared = ctx.raw_json.get("numTraining")  # absent or invalid: not compared
    if isinstance(declared, int) and declared != len(images):
        msg = f"numTraining is {declared} but imagesTr holds {len(images)} cases"
        ctx.add("num_training_mismatch", None, "dataset.json", msg, warning=True)
    if not ctx.cases_read:
        return
    orphans = [(c, rel) for c in sorted(images) for rel in images[c].values()]
    for cid, rel in orphans + sorted(labels.items()):
        if cid in ctx.listed:
            continue
        m = re.match(r"^(.+)_\d{4}$", cid)
        if rel.startswith("labelsTr") and m and m[1] in ctx.listed:
            msg = f"case {cid!r} is not in cases.csv: label maps have no channel suffix"
            ctx.add(
                "image_without_case", cid, rel, msg, fix=f"rename it to labelsTr/{m[1]}{ending}"
            )
        else:
            ctx.add("image_without_case", cid, rel, f"case {cid!r} is not in cases.csv")
