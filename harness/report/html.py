"""One self-contained HTML page per report: tables, figures, claims and provenance in a single file.

    write_html("reports/index.html", title="SplitMask reproduction", tables=[(caption, frame)],
               figures=[Path("reports/fig.png")], claims=[{"claim": ..., "paper": "holds", "ours": "fails",
               "detail": ...}], provenance={"git sha": "abc123", "runs": "42"})

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
VERDICTS = {"holds": "holds", "fails": "fails", "not enough results": "insufficient"}  # verdict -> CSS class
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
"""


def write_html(
    path: str | Path,
    *,
    title: str,
    tables: Iterable[tuple[str, pd.DataFrame]],
    figures: Iterable[str | Path],
    claims: Iterable[Mapping[str, str]],
    provenance: Mapping[str, str],
) -> Path:
    """Write the page to `path` (atomically) and return it.

    `tables`: (caption, DataFrame of display strings); a non-default index is shown as row labels. `figures`: image
    files (PNG; SVG and JPEG also work), captioned with their stem. `claims`: dicts with "claim", "paper", "ours"
    (verdicts: holds / fails / not enough results, coloured) and "detail". `provenance`: shown as a definition list.
    Empty sections are left out.
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
    claims = list(claims)
    if claims:
        head = "".join(f"<th>{h}</th>" for h in ("claim", "paper", "ours", "detail"))
        rows = "".join(
            f"<tr><td>{e(c.get('claim', ''))}</td>{_verdict(c.get('paper', ''))}{_verdict(c.get('ours', ''))}"
            f"<td>{e(c.get('detail', ''))}</td></tr>"
            for c in claims
        )
        parts.append(
            f'<section id="claims"><h2>Claims</h2><table class="claims"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></section>"
        )
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
    css = VERDICTS.get(str(word).strip().lower(), "other")
    return f'<td class="verdict {css}">{_escape(word)}</td>'


def _data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed a '{path.suffix}' file; expected one of {', '.join(MIME)}")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
