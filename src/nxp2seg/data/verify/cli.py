"""The ``nxp2seg-verify`` / ``python -m nxp2seg.data.verify`` command: arguments, a rich table, exit codes."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nxp2seg.data.verify.cohort import verify_cohort
from nxp2seg.data.verify.report import VerifyReport

__all__ = ["main"]

_OVERRIDES = ("cohort", "json", "check_images", "max_rows")


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nxp2seg-verify",
        description="Check a cohort against the nxp2seg dataset contract and list every problem. "
        "Exit code 0: no errors; 1: errors; 2: the cohort folder cannot be opened.",
    )
    parser.add_argument("cohort", nargs="?", help="the cohort folder (or cohort=DIR)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    no_images = "check tables and file names only (or check_images=false)"
    parser.add_argument("--no-images", dest="check_images", action="store_false", help=no_images)
    parser.add_argument("--max-rows", type=int, default=200, help="problems shown (--json has all)")
    plain, overrides = [], {}
    for tok in argv:  # Hydra-style key=value, for symmetry with the other commands
        key, sep, value = tok.partition("=")
        if sep and re.fullmatch(r"\+?[A-Za-z_]\w*", key):
            if key.lstrip("+") not in _OVERRIDES:
                parser.error(
                    f"unknown override {key!r}; use {', '.join(k + '=' for k in _OVERRIDES)}"
                )
            overrides[key.lstrip("+")] = value
        else:
            plain.append(tok)
    args = parser.parse_args(plain)
    for key, value in overrides.items():
        if key == "check_images":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                parser.error(f"check_images={value}: use true or false")
            args.check_images = value.lower() in ("true", "1", "yes")
        elif key == "max_rows":
            args.max_rows = int(value)
        else:
            setattr(args, key, value)
    if not args.cohort:
        parser.error("give the cohort folder: nxp2seg-verify COHORT (or cohort=COHORT)")
    return args


def _print_report(report: VerifyReport, max_rows: int) -> None:
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    problems = sorted(report.problems, key=lambda p: p.severity != "error")  # stable: errors first
    if problems:
        table = Table(title=escape(str(report.root)))
        for col, style in (
            ("", None),
            ("case", "cyan"),
            ("file", None),
            ("problem", None),
            ("fix", "green"),
        ):
            table.add_column(col, style=style, overflow="fold")
        for p in problems[:max_rows]:
            sev = "[red]error[/red]" if p.severity == "error" else "[yellow]warning[/yellow]"
            cells = (p.case_id or "", p.file or "", p.message, p.fix)
            table.add_row(sev, *map(escape, cells))
        console.print(table)
        if len(problems) > max_rows:
            console.print(
                f"... {len(problems) - max_rows} more problems not shown (--json has all)"
            )
    style = "green" if report.ok else "red"
    note = "" if report.checked_images else " (images not read)"
    console.print(f"[{style}]{escape(report.summary())}[/{style}]{note}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 ok, 1 errors, 2 cannot open)."""
    try:
        args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # argparse: --help, or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    report = verify_cohort(args.cohort, check_images=args.check_images)
    _print_report(report, args.max_rows)
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")
    if not report.opened:
        return 2
    return 0 if report.ok else 1
