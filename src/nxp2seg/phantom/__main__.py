"""``python -m nxp2seg.phantom out=DIR subjects=N preset=tiny|small|full seed=S [key=value ...]``

Writes a synthetic labelled cohort in the dataset contract (see docs/phantom.md).
Any field of :class:`nxp2seg.phantom.config.PhantomConfig` can be overridden
with a dotted key, e.g. ``acquisition.snr=[8,15]`` or ``disease.<knob>=...``.
Exit codes: 0 written, 1 generation failed, 2 bad arguments.
"""

from __future__ import annotations

import sys

from nxp2seg.config_utils import parse_key_values

__all__ = ["main", "parse_overrides"]


def parse_overrides(argv: list[str]) -> dict:
    """Parse Hydra-style ``key=value`` arguments (values in YAML syntax) into a nested dict."""
    return parse_key_values(argv, "out=/tmp/cohort subjects=8 preset=tiny seed=0", strip_plus=True)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        overrides = parse_overrides(argv)
        from nxp2seg.phantom.config import make_config

        cfg = make_config(overrides)
        if cfg.out is None:
            raise ValueError("give an output folder: out=DIR")
    except (ValueError, TypeError) as e:
        console.print(f"[red]nxp2seg.phantom: {e}[/red]")
        return 2
    from nxp2seg.phantom.generate import generate_cohort

    try:
        root = generate_cohort(config=cfg, progress=True)
    except Exception as e:  # noqa: BLE001 - report and exit non-zero
        console.print(f"[red]nxp2seg.phantom failed: {type(e).__name__}: {e}[/red]")
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
