"""The run's curves as one PNG in the run folder: the loss terms (left) and the in-run kNN top-1 (right, from
train.eval_every) against the step, read from metrics.jsonl and drawn with Pillow (a fastvit dependency).

    draw_curves(run_dir, ["loss", "dino_global", "dino_local", "ibot", "koleo"])  # -> run_dir / "curves.png"
"""

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CURVES_FILE = "curves.png"
KNN_KEY = "knn_top1"
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
_W, _H, _PAD = 520, 380, (64, 28, 16, 44)  # panel size; left, top, right, bottom margins


def read_metrics(path):
    """The rows of metrics.jsonl (a line cut off by a kill is skipped; none when a run logged no step)."""
    rows = []
    if not Path(path).is_file():
        return rows
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _series(rows, key):
    return [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), int | float)]


def _ticks(lo, hi, n=5):
    """About n round tick values (1, 2, 2.5 or 5 x a power of ten apart) within [lo, hi]."""
    raw = ((hi - lo) or abs(hi) or 1.0) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _panel(title, series, x_max, ylabel):
    """One chart: `series` is [(name, [(step, value)])], x from 0 to x_max."""
    img = Image.new("RGB", (_W, _H), "white")
    d, font = ImageDraw.Draw(img), ImageFont.load_default()
    left, top, right, bottom = _PAD[0], _PAD[1], _W - _PAD[2], _H - _PAD[3]
    values = [v for _, pts in series for _, v in pts]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    legend_h = 12 + 14 * len(series) if series else 0  # headroom: the legend box sits above the highest value
    hi += (hi - lo) * legend_h / max(bottom - top - legend_h, 1)
    px = lambda s: left + (right - left) * s / max(x_max, 1)  # noqa: E731
    py = lambda v: bottom - (bottom - top) * (v - lo) / (hi - lo)  # noqa: E731
    d.text((left, 6), title, fill="black", font=font)
    for v in _ticks(lo, hi):
        d.line([(left, py(v)), (right, py(v))], fill=(230, 230, 230))
        d.text((4, py(v) - 6), f"{v:.4g}", fill="black", font=font)
    for s in _ticks(0, x_max):
        d.text((px(s) - 8, bottom + 6), f"{s:g}", fill="black", font=font)
    d.rectangle([left, top, right, bottom], outline="black")
    d.text(((left + right) // 2 - 12, _H - 18), "step", fill="black", font=font)
    d.text((left + 4, top + 4), ylabel, fill="gray", font=font)
    for i, (_, pts) in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        xy = [(px(s), py(v)) for s, v in pts]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for x, y in xy if len(xy) < 30 else xy[-1:]:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    if series:  # the legend, over the lines
        d.rectangle([right - 116, top + 4, right - 4, top + 8 + 14 * len(series)], fill="white", outline="gray")
    for i, (name, _) in enumerate(series):
        d.text((right - 110, top + 6 + 14 * i), name, fill=_COLOURS[i % len(_COLOURS)], font=font)
    return img


def draw_curves(run_dir, loss_keys):
    """Writes run_dir/curves.png from run_dir/metrics.jsonl: the `loss_keys` that were logged against the step,
    and beside them knn_top1 (percent) when train.eval_every logged it. Returns the PNG's path, or None when no
    step was logged (train.steps=0), in which case nothing is drawn."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return None
    x_max = max((r["step"] for r in rows), default=1)
    losses = [(k, _series(rows, k)) for k in loss_keys if _series(rows, k)]
    knn = _series(rows, KNN_KEY)
    panels = [_panel("loss terms", losses, x_max, "loss")]
    if knn:
        panels.append(_panel("kNN top-1 of the EMA teacher (held-out split)", [(KNN_KEY, knn)], x_max, "%"))
    out = Image.new("RGB", (_W * len(panels), _H), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * _W, 0))
    path = run_dir / CURVES_FILE
    out.save(path)
    return path
