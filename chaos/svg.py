"""The drill's picture, drawn by hand as SVG (no plotting dependency): one dot per request at its
start time and latency, red crosses for errors, magenta diamonds for truncated successes, and
the fault windows shaded. The output depends only on its inputs, so it can be compared in tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from tdn.chaos.load import RequestRecord
from tdn.chaos.timeline import Window

WIDTH, HEIGHT = 960, 420
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 48, 72
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

OK_COLOUR = "#1f77b4"
FAILED_OVER_COLOUR = "#ff7f0e"
ERROR_COLOUR = "#d62728"
EXCUSED_COLOUR = "#9c6b6b"
TRUNCATED_COLOUR = "#c51bcb"
WINDOW_COLOUR = "#f4c7c3"


def _nice_ceiling(value: float) -> float:
    """The smallest power of ten at or above ``value``."""
    return 10.0 ** math.ceil(math.log10(max(value, 1e-3)))


class _Scale:
    """Time (linear) and latency (log10) to pixels."""

    def __init__(self, t_max: float, y_min: float, y_max: float) -> None:
        self.t_max = max(t_max, 1e-6)
        self.lo, self.hi = math.log10(y_min), math.log10(y_max)

    def x(self, t: float) -> float:
        return LEFT + PLOT_W * min(max(t / self.t_max, 0.0), 1.0)

    def y(self, seconds: float) -> float:
        v = math.log10(min(max(seconds, 10 ** self.lo), 10 ** self.hi))
        return TOP + PLOT_H * (1.0 - (v - self.lo) / (self.hi - self.lo))


def _latency(r: RequestRecord, metric: str) -> float:
    if r.ok and metric == "ttft" and r.ttft_s is not None:
        return r.ttft_s
    return r.total_s or 0.0


def _x_ticks(t_max: float) -> list[float]:
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if t_max / s <= 12)
    return [i * step for i in range(int(t_max // step) + 1)]


def render(title: str, verdict: str, records: Sequence[RequestRecord], windows: Sequence[Window],
           *, drill_end: float, metric: str = "total") -> str:
    """The picture as an SVG document."""
    done = [r for r in records if r.kind]
    t_max = max([drill_end, *(r.t_start for r in done)]) if done else max(drill_end, 1.0)
    y_max = _nice_ceiling(max([1.0, *(_latency(r, metric) for r in done)]))
    scale = _Scale(t_max, 0.01, y_max)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">'
           f'{escape(title)} — {escape(verdict)}</text>']
    # Fault windows, under everything else.
    for w in windows:
        end = w.end if w.end is not None else drill_end
        x0, x1 = scale.x(w.start), scale.x(end)
        out.append(f'<rect x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1.0):.1f}" '
                   f'height="{PLOT_H}" fill="{WINDOW_COLOUR}" fill-opacity="0.6">'
                   f'<title>{escape(w.title)}: {w.start:.2f}-{end:.2f} s</title></rect>')
    labelled: set[int] = set()
    for w in windows:
        if w.event in labelled:
            continue
        labelled.add(w.event)
        out.append(f'<text x="{scale.x(w.start) + 3:.1f}" y="{TOP + 12 + 12 * (w.event % 3)}" '
                   f'fill="#8a1c1c">{escape(w.title)}</text>')
    # Axes, grid and ticks.
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" '
               'stroke="#444"/>')
    decade = 0.01
    while decade <= y_max * 1.0001:
        y = scale.y(decade)
        label = f"{decade:g} s" if decade >= 1 else f"{decade * 1000:g} ms"
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    for t in _x_ticks(t_max):
        x = scale.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP + PLOT_H}" x2="{x:.1f}" '
                   f'y2="{TOP + PLOT_H + 4}" stroke="#444"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + PLOT_H + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{LEFT + PLOT_W / 2:.1f}" y="{TOP + PLOT_H + 32}" '
               'text-anchor="middle">seconds since the drill started (request start)</text>')
    axis = "time to first token" if metric == "ttft" else "request latency"
    out.append(f'<text transform="translate(14 {TOP + PLOT_H / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{axis} (log)</text>')
    # Requests: successes first, so that errors are drawn on top.
    for r in sorted(done, key=lambda r: (r.error or r.kind == "truncated_success", r.id)):
        x, y = scale.x(r.t_start), scale.y(_latency(r, metric))
        tip = (f"#{r.id} {r.kind} {r.factory or '-'} attempts={r.attempts} "
               f"total={(r.total_s or 0):.3f}s")
        if r.kind == "truncated_success":
            out.append(f'<path d="M{x:.1f} {y - 4:.1f}L{x + 4:.1f} {y:.1f}L{x:.1f} {y + 4:.1f}'
                       f'L{x - 4:.1f} {y:.1f}Z" fill="{TRUNCATED_COLOUR}">'
                       f'<title>{escape(tip)}</title></path>')
        elif r.error:
            colour = EXCUSED_COLOUR if r.excused else ERROR_COLOUR
            out.append(f'<path d="M{x - 3:.1f} {y - 3:.1f}L{x + 3:.1f} {y + 3:.1f}'
                       f'M{x - 3:.1f} {y + 3:.1f}L{x + 3:.1f} {y - 3:.1f}" stroke="{colour}" '
                       f'stroke-width="1.6"><title>{escape(tip + " " + r.detail)}</title></path>')
        else:
            colour = FAILED_OVER_COLOUR if r.attempts > 1 else OK_COLOUR
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.8" fill="{colour}" '
                       f'fill-opacity="0.75"><title>{escape(tip)}</title></circle>')
    # Legend.
    legend = [(OK_COLOUR, "served on the first attempt"),
              (FAILED_OVER_COLOUR, "served after failover"),
              (ERROR_COLOUR, "error"), (EXCUSED_COLOUR, "stream cut by the fault (reported)"),
              (TRUNCATED_COLOUR, "truncated success"), (WINDOW_COLOUR, "fault in force")]
    x = LEFT
    y = HEIGHT - 14
    for colour, text in legend:
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{y}">{escape(text)}</text>')
        x += 20 + 6 * len(text)
    out.append("</svg>")
    return "\n".join(out) + "\n"
