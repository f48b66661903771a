"""Where ``analyze`` puts what it finds: CSV + Markdown per table, figures, one HTML page.

* CSVs are UTF-8 **with a byte-order mark**, so Excel opens them with their
  ``±``, ``–`` and ``²`` intact (without it, Excel reads UTF-8 as a legacy
  code page); pandas and R read them as usual.
* Each table has a machine-readable CSV (every number, full precision) and a
  Markdown rendering of its *display* form (labels, ``n (%)``, ``mean ± SD``,
  p-values as ``<0.001``) at the chosen decimals.
* Figures go to ``figures/NAME.{svg,pdf,png}`` (PNG at 300 dpi by default).
* Everything is also collected, in order, into ``analysis.md`` and
  ``analysis.html`` (figures embedded as SVG, nothing fetched from outside).
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nxp2seg.io import atomic_write_bytes, atomic_write_text
from nxp2seg.report.paper_figures import save_figure
from nxp2seg.stats.tables import format_number, format_p, to_markdown

__all__ = ["Item", "Section", "Writer", "csv_bytes", "p_columns"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1250px;
color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.3em;margin-top:36px;border-bottom:2px solid #ccc}
h3{font-size:1.05em;margin:22px 0 4px}
table{border-collapse:collapse;margin:6px 0;font-size:0.86em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:#666;font-size:0.9em}figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}
.files{color:#666;font-size:0.82em}.scroll{max-height:560px;overflow:auto}
"""


def csv_bytes(df: pd.DataFrame) -> bytes:
    """The table as UTF-8 CSV with a byte-order mark (no index, blank for missing)."""
    return ("\ufeff" + df.to_csv(index=False, float_format="%.10g", na_rep="")).encode("utf-8")


_P_NAME = re.compile(r"(^|[\s_])p($|[\s_(])")


def p_columns(df: pd.DataFrame) -> list[str]:
    """Numeric columns holding p-values: ``p``, ``*_p``, ``p_*``, ``McNemar p``, ``p (adjusted)``..."""
    return [c for c in df.columns if _P_NAME.search(str(c)) and pd.api.types.is_numeric_dtype(df[c])]


@dataclass
class Item:
    kind: str  # "table" | "figure" | "text"
    title: str
    body: Any  # display DataFrame | SVG text | str
    note: str = ""
    files: list[str] = field(default_factory=list)


@dataclass
class Section:
    title: str
    intro: str = ""
    items: list[Item] = field(default_factory=list)


class Writer:
    """Writes tables and figures under ``out`` and remembers them for the page and the summary."""

    def __init__(self, out: Path, *, decimals: int = 2, p_decimals: int = 3,
                 formats: tuple[str, ...] = ("svg", "pdf", "png"), dpi: int = 300,
                 figures: bool = True):
        self.out = Path(out)
        self.decimals, self.p_decimals = int(decimals), int(p_decimals)
        self.formats, self.dpi, self.figures_on = tuple(formats), int(dpi), bool(figures)
        self.sections: list[Section] = []
        self.files: list[str] = []

    def section(self, title: str, intro: str = "") -> Section:
        s = Section(title, intro)
        self.sections.append(s)
        return s

    def table(self, name: str, data: pd.DataFrame, title: str, *, display: pd.DataFrame | None = None,
              note: str = "") -> None:
        """``name.csv`` (``data``, every number) and ``name.md`` (``display`` or ``data``)."""
        shown = data if display is None else display
        atomic_write_bytes(self.out / f"{name}.csv", csv_bytes(data))
        md = to_markdown(shown, decimals=self.decimals, p_columns=p_columns(shown),
                         p_decimals=self.p_decimals)
        atomic_write_text(self.out / f"{name}.md", f"## {title}\n\n{md}" + (f"\n{note}\n" if note else ""))
        files = [f"{name}.csv", f"{name}.md"]
        self.files += files
        self.sections[-1].items.append(Item("table", title, shown, note, files))

    def figure(self, name: str, fig: Figure, title: str, caption: str = "") -> None:
        if not self.figures_on:
            return
        paths, svg = save_figure(fig, self.out / "figures" / name, self.formats, self.dpi)
        files = [str(p.relative_to(self.out)) for p in paths]
        self.files += files
        self.sections[-1].items.append(Item("figure", title, svg, caption, files))

    def text(self, title: str, body: str) -> None:
        self.sections[-1].items.append(Item("text", title, body))

    # -- documents -------------------------------------------------------------------------
    def markdown(self, title: str, intro: str) -> str:
        lines = [f"# {title}", "", intro, ""]
        for s in self.sections:
            lines += [f"## {s.title}", ""] + ([s.intro, ""] if s.intro else [])
            for it in s.items:
                if it.kind == "table":
                    lines += [f"### {it.title}", "",
                              to_markdown(it.body, decimals=self.decimals,
                                          p_columns=p_columns(it.body), p_decimals=self.p_decimals)]
                elif it.kind == "figure":
                    png = next((f for f in it.files if f.endswith(".png")), it.files[0])
                    lines += [f"### {it.title}", "", f"![{it.title}]({png})", ""]
                else:
                    lines += [f"### {it.title}", "", it.body, ""]
                if it.note:
                    lines += [it.note, ""]
        return "\n".join(lines)

    def html(self, title: str, intro: str) -> str:
        parts = [(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}"
                  f"</title><style>{_CSS}</style></head><body><h1>{_e(title)}</h1><p>{_e(intro)}</p>")]
        toc = "".join(f"<li><a href=\"#s{i}\">{_e(s.title)}</a></li>" for i, s in enumerate(self.sections))
        parts.append(f"<ul>{toc}</ul>")
        for i, s in enumerate(self.sections):
            parts.append(f"<h2 id=\"s{i}\">{_e(s.title)}</h2>")
            if s.intro:
                parts.append(f"<p class=\"muted\">{_e(s.intro)}</p>")
            for it in s.items:
                parts.append(f"<h3>{_e(it.title)}</h3>")
                if it.kind == "table":
                    parts.append(f"<div class=\"scroll\">{self._table_html(it.body)}</div>")
                elif it.kind == "figure":
                    data = base64.b64encode(it.body.encode("utf-8")).decode("ascii")
                    parts.append(f"<figure><img src=\"data:image/svg+xml;base64,{data}\" "
                                 f"alt=\"{_e(it.title)}\"></figure>")
                else:
                    parts.append(f"<p>{_e(it.body)}</p>")
                if it.note:
                    parts.append(f"<p class=\"muted\">{_e(it.note)}</p>")
                if it.files:
                    parts.append(f"<p class=\"files\">files: {_e(', '.join(it.files))}</p>")
        parts.append("</body></html>\n")
        return "".join(parts)

    def _table_html(self, df: pd.DataFrame) -> str:
        pcols = set(p_columns(df))
        head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
        rows = []
        for row in df.itertuples(index=False, name=None):
            cells = []
            for c, v in zip(df.columns, row):
                num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                if c in pcols and num:
                    text = format_p(v, self.p_decimals)
                else:
                    text = _fmt(v, self.decimals)
                cells.append(f"<td class=\"num\">{_e(text)}</td>" if num else f"<td>{_e(text)}</td>")
            rows.append(f"<tr>{''.join(cells)}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, decimals: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format_number(v, decimals)
