"""Reading a stylization sweep: the mean scores of each setting over the photos, the style-vs-structure
trade-off frontier, the recommended setting by a stated rule, and a before/after contact sheet.

The rule (:func:`recommend`): among the settings whose mean edge F1 to the photos is at least
``min_edge_f1`` (they keep the person's outline), the one with the highest style: the CLIP similarity to
the instance images where it was measured, else the weight-free style score. When no setting keeps that
much structure, the one that keeps the most.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..imaging import image_grid

STRUCTURE = "edge_f1"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def style_key(rows: Sequence[dict]) -> str:
    """The style measure of a sweep: ``clip_style`` where measured, else ``style_score``."""
    return "clip_style" if any(_finite(r.get("clip_style")) for r in rows) else "style_score"


def setting_summary(records: Sequence[dict]) -> list[dict]:
    """One row per setting (in sweep order): method, strength, conditioning scale, the number of photos and
    the mean of every score over them."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["label"], {"label": r["label"], "method": r["method"], "strength": r["strength"],
                                           "conditioning_scale": r.get("conditioning_scale"), "_scores": []})
        row["_scores"].append(r["scores"])
    out = []
    for row in rows.values():
        scores = row.pop("_scores")
        keys = [k for k in scores[0] if all(_finite(s.get(k)) or s.get(k) is None for s in scores)]
        means = {}
        for k in keys:
            vals = [s[k] for s in scores if _finite(s.get(k))]
            means[k] = sum(vals) / len(vals) if vals else math.nan
        out.append({**row, "photos": len(scores), **means})
    return out


def frontier(rows: Sequence[dict], x: str = STRUCTURE, y: str | None = None) -> list[str]:
    """Labels of the settings no other setting beats on both structure (``x``) and style (``y``): the
    trade-off frontier, ordered by structure."""
    y = y or style_key(rows)
    pts = [r for r in rows if _finite(r.get(x)) and _finite(r.get(y))]
    front = [r for r in pts if not any(o[x] >= r[x] and o[y] >= r[y] and (o[x] > r[x] or o[y] > r[y]) for o in pts)]
    return [r["label"] for r in sorted(front, key=lambda r: r[x])]


def recommend(rows: Sequence[dict], min_edge_f1: float = 0.3) -> dict[str, Any]:
    """The recommended setting by the module's rule: ``{"label", "rule", "reason"}`` (label None if empty)."""
    if not rows:
        return {"label": None, "rule": "none", "reason": "nothing was stylized"}
    y = style_key(rows)
    keeping = [r for r in rows if _finite(r.get(STRUCTURE)) and r[STRUCTURE] >= min_edge_f1]
    if keeping:
        best = max(keeping, key=lambda r: r[y] if _finite(r.get(y)) else -math.inf)
        reason = (f"of the {len(keeping)} settings whose mean edge F1 is at least {min_edge_f1:g}, {best['label']} "
                  f"has the highest {y} ({best[y]:.3f}; edge F1 {best[STRUCTURE]:.3f})")
        return {"label": best["label"], "rule": "style within structure", "reason": reason}
    best = max(rows, key=lambda r: r[STRUCTURE] if _finite(r.get(STRUCTURE)) else -math.inf)
    return {"label": best["label"], "rule": "most structure",
            "reason": f"no setting reaches edge F1 {min_edge_f1:g}; {best['label']} keeps the most "
                      f"({best[STRUCTURE]:.3f})"}


def contact_sheet(out_dir: str | Path, records: Sequence[dict], label: str, input_file: str = "input.png",
                  tile: int = 256) -> Image.Image:
    """Before/after over the folder: one row per photo, the photo beside its output at ``label``, each shown
    at least ``tile`` px wide."""
    out_dir = Path(out_dir)
    pairs = []
    for r in records:
        if r["label"] == label:
            for path in (out_dir / r["photo"] / input_file, out_dir / r["file"]):
                img = Image.open(path).convert("RGB")
                pairs.append(img if img.width >= tile else img.resize((tile, tile * img.height // img.width), Image.LANCZOS))
    if not pairs:
        raise ValueError(f"no output with the setting {label!r} in {out_dir}")
    return image_grid(pairs, cols=2)


def sweep_html(rows: Sequence[dict], recommended: dict) -> str:
    """The per-setting means as an HTML table, the frontier marked, the recommendation in bold."""
    import html

    front = set(frontier(rows))
    keys = ["edge_f1", "ssim", "style_score", "clip_style", "dino", "identity", "face_kept"]
    keys = [k for k in keys if any(k in r for r in rows)]
    head = "".join(f"<th>{h}</th>" for h in ["setting", "photos", *keys, "frontier"])
    body = []
    for r in rows:
        cells = [html.escape(r["label"]), str(r["photos"])]
        cells += ["–" if not _finite(r.get(k)) else f"{r[k]:.3f}" for k in keys]
        cells.append("●" if r["label"] in front else "")
        bold = " style='font-weight:bold'" if r["label"] == recommended.get("label") else ""
        body.append(f"<tr{bold}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = f"<p><b>Recommended: {html.escape(str(recommended.get('label')))}</b>: " \
           f"{html.escape(recommended.get('reason', ''))}</p>"
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{note}"


def manifest_html(rows: Sequence[dict]) -> str:
    """The manifest of a stylized folder as HTML: one row per photo file with its verdict and reason."""
    import html

    head = "".join(f"<th>{h}</th>" for h in ("file", "verdict", "reason", "notes", "outputs"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>"
                                    for k in ("file", "verdict", "reason", "notes", "outputs")) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
