"""How far an analysis of the model's grades agrees with the readers' (two ``analyze`` outputs).

Usage::

    python scripts/compare_analyses.py READERS_OUT MODEL_OUT [--out FILE.md] [--json FILE.json]
        [--phantom COHORT]

Reads both ``summary.json`` files and prints (or writes) a Markdown report:

* the group comparison (``compare.by``): per item the readers' and the model's
  difference with its adjusted p, whether the direction agrees, whether the
  significance call (adjusted p < 0.05) agrees; the correlation of the two
  sets of differences; both pooled effects;
* the description: patients with each finding per compartment, both counts;
* Table 1: both correlation coefficients per variable, sign agreement;
* with ``--phantom COHORT`` (a phantom cohort with ``disease.groups``): per
  item the direction the generator specified (``truth/config.json``'s
  ``disease.group_muscle_shift``, as ``nxp2seg.phantom.muscles.specified_directions``
  reads it) and whether the readers' and the model's differences recover it.

Nothing is recomputed: this only lines up what ``analyze`` wrote. ``--json``
writes the same figures as records (for docs/benchmarks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from nxp2seg.phantom.disease import DiseaseConfig
from nxp2seg.phantom.muscles import specified_directions


def _load(path: Path) -> dict:
    f = Path(path) / "summary.json"
    if not f.is_file():
        raise SystemExit(f"{f}: missing; give the output folder of python -m nxp2seg.analyze")
    return json.loads(f.read_text())


def _fmt(x, d=2) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


def _p(x) -> str:
    return "–" if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def phantom_directions(cohort: Path, groups: list[str]) -> dict[str, int]:
    """The generator's specified direction per muscle (+1: the second group higher) of a phantom."""
    f = Path(cohort) / "truth" / "config.json"
    if not f.is_file():
        raise SystemExit(f"{f}: missing; --phantom takes a phantom cohort (python -m nxp2seg.phantom)")
    disease = json.loads(f.read_text()).get("disease", {})
    shift = disease.get("group_muscle_shift", {})
    missing = [g for g in groups if g not in shift]
    if missing:
        raise SystemExit(f"{f}: disease.group_muscle_shift has no {missing}; the analysis compared "
                         f"{groups}, the phantom specifies {sorted(shift)}")
    cfg = DiseaseConfig(groups=disease.get("groups", {}), group_muscle_shift=shift)
    return specified_directions(cfg, (groups[0], groups[1]))


def compare_section(a: dict, b: dict, part: str = "primary", cohort: Path | None = None,
                    records: dict | None = None) -> list[str]:
    ca, cb = a.get("compare", {}).get(part), b.get("compare", {}).get(part)
    if not ca or not cb:
        return []
    ra = {c["item"]: c for c in ca["contrasts"]}
    rb = {c["item"]: c for c in cb["contrasts"]}
    items = [i for i in ra if i in rb]
    groups = ca["groups"]
    spec = phantom_directions(cohort, groups) if cohort is not None else {}
    head = "| item | readers: difference (adj. p) | model: difference (adj. p) | same direction | same call (adj. p < 0.05) |"
    rule = "| --- | --- | --- | --- | --- |"
    if spec:
        head += " specified | readers recover it | model recovers it |"
        rule += " --- | --- | --- |"
    lines = [f"### Group comparison ({part}): {groups[1]} − {groups[0]}", "", head, rule]
    same_dir = same_call = 0
    rows = []
    for it in items:
        x, y = ra[it], rb[it]
        d = np.sign(x["estimate"]) == np.sign(y["estimate"])
        s = (x["p_adjusted"] < 0.05) == (y["p_adjusted"] < 0.05)
        same_dir += d
        same_call += s
        row = {"item": it, "readers": x["estimate"], "readers_p_adjusted": x["p_adjusted"],
               "model": y["estimate"], "model_p_adjusted": y["p_adjusted"],
               "same_direction": bool(d), "same_call": bool(s)}
        line = (f"| {it} | {_fmt(x['estimate'])} ({_p(x['p_adjusted'])}) | "
                f"{_fmt(y['estimate'])} ({_p(y['p_adjusted'])}) | {'yes' if d else 'NO'} | "
                f"{'yes' if s else 'NO'} |")
        if spec:
            sign = spec.get(it)
            row["specified"] = sign
            if sign:  # a muscle the generator shifts differently in the two groups
                row["readers_recover"] = bool(np.sign(x["estimate"]) == sign)
                row["model_recover"] = bool(np.sign(y["estimate"]) == sign)
                line += (f" {groups[1] if sign > 0 else groups[0]} higher | "
                         f"{'yes' if row['readers_recover'] else 'NO'} | "
                         f"{'yes' if row['model_recover'] else 'NO'} |")
            else:
                line += f" {'alike' if sign == 0 else 'not specified'} | – | – |"
        rows.append(row)
        lines.append(line)
    ea = np.array([ra[i]["estimate"] for i in items], float)
    eb = np.array([rb[i]["estimate"] for i in items], float)
    r = sps.pearsonr(ea, eb).statistic if len(items) > 2 else np.nan
    pa, pb = ca["pooled"], cb["pooled"]
    verdict = (f"Same direction in {same_dir} of {len(items)} items, same significance call in "
               f"{same_call}; Pearson r of the differences {_fmt(r, 3)}; mean |model − readers| "
               f"{_fmt(float(np.mean(np.abs(eb - ea))))} grades. Pooled effect: readers "
               f"{_fmt(pa['estimate'])} [{_fmt(pa['ci_low'])}, {_fmt(pa['ci_high'])}] "
               f"(p {_p(pa['p'])}), model {_fmt(pb['estimate'])} [{_fmt(pb['ci_low'])}, "
               f"{_fmt(pb['ci_high'])}] (p {_p(pb['p'])}).")
    lines += ["", verdict]
    if spec:
        differ = [r for r in rows if r.get("specified")]
        rec_a = sum(r["readers_recover"] for r in differ)
        rec_b = sum(r["model_recover"] for r in differ)
        sig_b = sum(r["model_recover"] and r["model_p_adjusted"] < 0.05 for r in differ)
        lines += ["", (f"Of the {len(differ)} items whose groups differ by specification: the readers "
                       f"recover the direction of {rec_a}, the model of {rec_b} ({sig_b} with adjusted "
                       f"p < 0.05).")]
    lines.append("")
    if records is not None:
        records[part] = {"groups": groups, "items": rows, "same_direction": int(same_dir),
                         "same_call": int(same_call), "n_items": len(items),
                         "pearson_r": None if np.isnan(r) else float(r),
                         "mean_abs_difference": float(np.mean(np.abs(eb - ea))),
                         "pooled_readers": pa, "pooled_model": pb}
    return lines


def describe_section(a: dict, b: dict) -> list[str]:
    ia, ib = a.get("describe", {}).get("involvement"), b.get("describe", {}).get("involvement")
    if not ia or not ib:
        return []
    ta = pd.DataFrame(ia).set_index(["station", "compartment"])
    tb = pd.DataFrame(ib).set_index(["station", "compartment"])
    findings = ["edema", "fat", "fascial_edema", "subcutaneous_edema"]
    lines = ["### Patients with each finding (readers / model)", "",
             "| station | compartment | " + " | ".join(findings) + " |",
             "| --- | --- | " + " | ".join("---" for _ in findings) + " |"]
    for key in ta.index.intersection(tb.index):
        cells = [f"{ta.loc[key, f + '_n']} / {tb.loc[key, f + '_n']}" for f in findings]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return lines + [""]


def table1_section(a: dict, b: dict) -> list[str]:
    ca = {r["variable"]: r for r in a.get("clinical", {}).get("correlations", [])}
    cb = {r["variable"]: r for r in b.get("clinical", {}).get("correlations", [])}
    common = [v for v in ca if v in cb and ca[v].get("r") is not None and cb[v].get("r") is not None]
    if not common:
        return []
    lines = ["### Table 1: r (readers / model)", "", "| variable | readers | model | same sign |",
             "| --- | --- | --- | --- |"]
    same = 0
    for v in common:
        s = np.sign(ca[v]["r"]) == np.sign(cb[v]["r"])
        same += s
        lines.append(f"| {v} | {_fmt(ca[v]['r'])} | {_fmt(cb[v]['r'])} | {'yes' if s else 'NO'} |")
    return lines + ["", f"Same sign for {same} of {len(common)} variables.", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("readers", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path, help="also write the group comparison's figures as JSON")
    ap.add_argument("--phantom", type=Path, help="phantom cohort: check the specified directions")
    args = ap.parse_args(argv)
    a, b = _load(args.readers), _load(args.model)
    records: dict = {}
    lines = [f"## {args.model} against {args.readers}", ""]
    lines += (compare_section(a, b, "primary", args.phantom, records)
              + compare_section(a, b, "secondary", args.phantom, records))
    lines += describe_section(a, b) + table1_section(a, b)
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
