#!/usr/bin/env python
"""Time the phantom generator: preset tiny (8 subjects) and small (48 subjects).

Usage: python scripts/benchmark_phantom.py [--json OUT.json] [--skip-small]

Targets (issue 2): tiny, 8 subjects < 10 s; small, 48 subjects < 2 min on 2 cores.
Times the command line users run (``python -m nxp2seg.phantom``), start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(preset: str, subjects: int, tmp: Path) -> dict:
    out = tmp / f"{preset}-{subjects}"
    cmd = [sys.executable, "-m", "nxp2seg.phantom", f"out={out}", f"subjects={subjects}", f"preset={preset}", "seed=0"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"preset": preset, "subjects": subjects, "cases": 2 * subjects, "seconds": round(wall, 2), "megabytes": round(size / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-small", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run("tiny", 8, Path(tmp)))
        if not args.skip_small:
            rows.append(run("small", 48, Path(tmp)))
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}, "runs": rows}
    print(f"{'preset':8} {'subjects':>8} {'cases':>6} {'seconds':>8} {'MB':>7}")
    for r in rows:
        print(f"{r['preset']:8} {r['subjects']:>8} {r['cases']:>6} {r['seconds']:>8} {r['megabytes']:>7}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
