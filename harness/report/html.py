"""One self-contained HTML page per report: tables, figures, claims and provenance in a single file.

    write_html("reports/index.html", title="SplitMask reproduction", tables=[(caption, frame)],
               figures=[Path("reports/fig.png")], claims=[{"claim": ..., "paper": "holds", "ours": "not shown",
               "detail": ..., "margins": ["a > b: margin +2.00 ± 2.89 (+0.7 SE; 2 needed): not shown"]}],
               provenance={"git sha": "abc123", "runs": "42"}, ranks=["rank agreement with the paper: ..."])

Nothing is fetched when the page is opened (no CDN, fonts, scripts or external CSS): images are embedded as base64
data URIs and the style sheet is inline, so the file can be mailed, archived or opened on an offline cluster node.
Every piece of text is HTML-escaped; the file is written atomically.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from harness.io import atomic_write_text

__all__ = ["write_html"]

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
VERDICTS = {"holds": "holds", "fails": "fails", "not shown": "unshown", "not enough results": "insufficient"}
UNKNOWN_SPREAD = {"holds (": "weak holds", "fails (": "weak fails"}  # "holds (spread unknown: 1 seed)": CSS classes
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; }
figure { margin: 0 0 1.5rem; } figcaption { font-weight: 600; margin-bottom: .3rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
.verdict { font-weight: 600; white-space: nowrap; }
.verdict.holds { color: #17663a; background: #e3f4e8; } .verdict.fails { color: #a11d1d; background: #fbe4e4; }
.verdict.insufficient { color: #6b5a00; background: #fbf3d5; } .verdict.other { color: #555; }
.verdict.unshown { color: #555; background: #eee; } .verdict.weak { font-weight: 400; font-style: italic; }
ul.margins { margin: .3rem 0 0; padding-left: 1.1rem; font-family: ui-monospace, monospace; font-size: .8rem; }
"""


def write_html(
    path: str | Path,
    *,
    title: str,
    tables: Iterable[tuple[str, pd.DataFrame]],
    figures: Iterable[str | Path],
    claims: Iterable[Mapping],
    provenance: Mapping[str, str],
    ranks: Iterable[str] = (),
) -> Path:
    """Write the page to `path` (atomically) and return it.

    `tables`: (caption, DataFrame of display strings); a non-default index is shown as row labels. `figures`: image
    files (PNG; SVG and JPEG also work), captioned with their stem. `claims`: dicts with "claim", "paper", "ours"
    (verdicts: holds / fails / not shown / not enough results, coloured), "detail" and optionally "margins" (lines,
    listed under the detail). `ranks`: lines of rank agreement, shown with the claims. `provenance`: shown as a
    definition list. Empty sections are left out.
    """
    path = Path(path)
    e = _escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if provenance:
        items = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in provenance.items())
        parts.append(f'<section id="provenance"><h2>Provenance</h2><dl>{items}</dl></section>')
    claims, ranks = list(claims), list(ranks)
    if claims or ranks:
        parts.append('<section id="claims"><h2>Claims</h2>')
        parts += [f'<p class="rank">{e(line)}</p>' for line in ranks]
        if claims:
            head = "".join(f"<th>{h}</th>" for h in ("claim", "paper", "ours", "detail"))
            rows = "".join(
                f"<tr><td>{e(c.get('claim', ''))}</td>{_verdict(c.get('paper', ''))}{_verdict(c.get('ours', ''))}"
                f"<td>{e(c.get('detail', ''))}{_margins(c.get('margins') or ())}</td></tr>"
                for c in claims
            )
            parts.append(f'<table class="claims"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
        parts.append("</section>")
    tables = list(tables)
    if tables:
        parts.append('<section id="tables"><h2>Tables</h2>')
        for caption, frame in tables:
            index = not isinstance(frame.index, pd.RangeIndex)
            body = frame.to_html(escape=True, index=index, border=0, na_rep="", classes="results")
            parts.append(f"<figure><figcaption>{e(caption)}</figcaption>{body}</figure>")
        parts.append("</section>")
    figures = [Path(f) for f in figures]
    if figures:
        parts.append('<section id="figures"><h2>Figures</h2>')
        for figure in figures:
            parts.append(f'<figure><figcaption>{e(figure.stem)}</figcaption><img src="{_data_uri(figure)}" '
                         f'alt="{e(figure.stem)}"></figure>')  # fmt: skip
        parts.append("</section>")
    parts.append("</body></html>\n")
    atomic_write_text(path, "\n".join(parts))
    return path


def _escape(value) -> str:
    return html.escape(str(value), quote=True)


def _verdict(word: str) -> str:
    """A verdict cell, coloured by what it says (anything unexpected is shown plainly, never dropped)."""
    text = str(word).strip().lower()
    css = VERDICTS.get(text) or next((c for p, c in UNKNOWN_SPREAD.items() if text.startswith(p)), "other")
    return f'<td class="verdict {css}">{_escape(word)}</td>'


def _margins(lines: Iterable[str]) -> str:
    items = "".join(f"<li>{_escape(line)}</li>" for line in lines)
    return f'<ul class="margins">{items}</ul>' if items else ""


def _data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed a '{path.suffix}' file; expected one of {', '.join(MIME)}")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
