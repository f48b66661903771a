#!/usr/bin/env python
"""Training step with glibc's default malloc against nxp2seg's (``nxp2seg.runtime.keep_freed_memory``).

Usage: python scripts/benchmark_allocator.py [--steps 25] [--repeats 2] [--json OUT]

Each setting runs in its own process (malloc settings are per process), in
turn, ``--repeats`` times: the default UNet [16, 32, 64, 128] (residual units,
instance norm, PReLU, 16 output classes as the phantom's schema) trained with
AdamW and Dice + cross-entropy on two random 128 x 112 x 16 patches per step,
as ``python -m nxp2seg.train`` steps. Reports the median step (after 5 warm-up
steps), user and kernel CPU seconds and minor page faults per run, and whether
the weights after the last step are bit-identical across settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import hashlib, json, resource, statistics, sys, time
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from nxp2seg.runtime import keep_freed_memory
kept = keep_freed_memory()
steps = int(sys.argv[1])
torch.manual_seed(0)
net = UNet(3, 3, 16, channels=(16, 32, 64, 128), strides=((2, 2, 1), (2, 2, 2), (2, 2, 1)),
           num_res_units=1, norm="instance", act="prelu")
opt = torch.optim.AdamW(net.parameters(), 1e-2)
loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
g = torch.Generator().manual_seed(1)
times = []
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(steps):
    x = torch.randn(2, 3, 128, 112, 16, generator=g)
    y = torch.randint(0, 16, (2, 1, 128, 112, 16), generator=g)
    t = time.perf_counter()
    opt.zero_grad()
    loss(net(x), y).backward()
    opt.step()
    times.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
print(json.dumps({"kept": kept, "median_step_s": statistics.median(times[5:]),
                  "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "weights_sha256": digest}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"glibc default": [], "nxp2seg": []}
    for _ in range(args.repeats):
        for name, results in runs.items():
            env = dict(os.environ)
            env.pop("NXP2SEG_MALLOC", None)
            if name == "glibc default":
                env["NXP2SEG_MALLOC"] = "default"
            out = subprocess.run([sys.executable, "-c", _CHILD, str(args.steps)], env=env,
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'setting':15s} {'median step s':>14s} {'user s':>8s} {'kernel s':>9s} {'minor faults':>13s}")
    for name, rs in runs.items():
        for r in rs:
            print(f"{name:15s} {r['median_step_s']:14.3f} {r['user_s']:8.1f} {r['sys_s']:9.1f} {r['minor_faults']:13,d}")
    same = len({r["weights_sha256"] for rs in runs.values() for r in rs}) == 1
    print(f"weights bit-identical across settings and runs: {same}")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "runs": runs, "bit_identical": same}, indent=1))


if __name__ == "__main__":
    main()
