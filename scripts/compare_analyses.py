"""How far an analysis of the model's grades agrees with the readers' (two ``analyze`` outputs).

Usage::

    python scripts/compare_analyses.py READERS_OUT MODEL_OUT [--out FILE.md]

Reads both ``summary.json`` files and prints (or writes) a Markdown report:

* the group comparison (``compare.by``): per item the readers' and the model's
  difference with its adjusted p, whether the direction agrees, whether the
  significance call (adjusted p < 0.05) agrees; the correlation of the two
  sets of differences; both pooled effects;
* the description: patients with each finding per compartment, both counts;
* Table 1: both correlation coefficients per variable, sign agreement.

Nothing is recomputed: this only lines up what ``analyze`` wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps


def _load(path: Path) -> dict:
    f = Path(path) / "summary.json"
    if not f.is_file():
        raise SystemExit(f"{f}: missing; give the output folder of python -m nxp2seg.analyze")
    return json.loads(f.read_text())


def _fmt(x, d=2) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


def _p(x) -> str:
    return "–" if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def compare_section(a: dict, b: dict, part: str = "primary") -> list[str]:
    ca, cb = a.get("compare", {}).get(part), b.get("compare", {}).get(part)
    if not ca or not cb:
        return []
    ra = {c["item"]: c for c in ca["contrasts"]}
    rb = {c["item"]: c for c in cb["contrasts"]}
    items = [i for i in ra if i in rb]
    groups = ca["groups"]
    lines = [f"### Group comparison ({part}): {groups[1]} − {groups[0]}", "",
             "| item | readers: difference (adj. p) | model: difference (adj. p) | same direction | same call (adj. p < 0.05) |",
             "| --- | --- | --- | --- | --- |"]
    same_dir = same_call = 0
    for it in items:
        x, y = ra[it], rb[it]
        d = np.sign(x["estimate"]) == np.sign(y["estimate"])
        s = (x["p_adjusted"] < 0.05) == (y["p_adjusted"] < 0.05)
        same_dir += d
        same_call += s
        lines.append(f"| {it} | {_fmt(x['estimate'])} ({_p(x['p_adjusted'])}) | "
                     f"{_fmt(y['estimate'])} ({_p(y['p_adjusted'])}) | {'yes' if d else 'NO'} | "
                     f"{'yes' if s else 'NO'} |")
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
    lines += ["", verdict, ""]
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
    args = ap.parse_args(argv)
    a, b = _load(args.readers), _load(args.model)
    lines = [f"## {args.model} against {args.readers}", ""]
    lines += compare_section(a, b, "primary") + compare_section(a, b, "secondary")
    lines += describe_section(a, b) + table1_section(a, b)
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
