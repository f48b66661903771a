"""nxp2seg.runtime: glibc keeps freed memory (no page faults on re-allocation)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# a benchmark more than a unit test (two subprocesses importing torch, counting page faults):
# slow, out of the quick suite; scripts/benchmark_allocator.py measures the same on real steps
pytestmark = pytest.mark.slow

_PROBE = r"""
import json, os, resource, sys
import torch
from nxp2seg.runtime import keep_freed_memory
on = keep_freed_memory()
again = keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv3d(8, 8, 3, padding=1)
x = torch.randn(1, 8, 128, 128, 16, requires_grad=True)  # 8 MB activations, as in a U-Net step
def step():
    conv(torch.cat([x, x], dim=2)).square().sum().backward()
step()  # the first step grows the heap
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"on": on, "again": again, "faults": faults}))
"""


def _probe(env_value: str | None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != "NXP2SEG_MALLOC"}
    if env_value is not None:
        env["NXP2SEG_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux-only")
def test_freed_blocks_are_reused_without_page_faults():
    kept, default = _probe(None), _probe("default")
    if not kept["on"]:
        pytest.skip("not glibc: mallopt is unavailable")
    assert kept["again"] is True  # idempotent
    assert default["on"] is False  # NXP2SEG_MALLOC=default leaves glibc alone
    # glibc's default maps (and faults in) the large activations again on every step
    assert kept["faults"] * 5 < default["faults"], (kept, default)
