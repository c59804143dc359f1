"""Small inline SVG plots (the template draws them from these coordinates): queue depth over
time, a highlight's score curve with its chosen windows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT, PAD = 640, 160, 28
COLOURS = ("#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#f59f00", "#c92a2a", "#495057")


@dataclass
class Line:
    name: str
    points: str  # "x,y x,y ..." for <polyline>
    colour: str


@dataclass
class Plot:
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD
    lines: list[Line] = field(default_factory=list)
    y_max: float = 0.0
    x_label: str = ""
    windows: list[tuple[float, float, float, float]] = field(default_factory=list)  # x,w,t0,t1


def _scale(
    values: Sequence[float], low: float, high: float, out_low: float, out_high: float
) -> list[float]:
    span = (high - low) or 1.0
    return [out_low + (v - low) / span * (out_high - out_low) for v in values]


def _polyline(xs: Sequence[float], ys: Sequence[float]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))


def depth_plot(series: dict[str, list[tuple[float, int]]]) -> Plot:
    """Depth of each queue over the sampled times (queues that never held a message are left
    out, so the plot stays readable)."""
    busy = {q: pts for q, pts in series.items() if any(d for _, d in pts)}
    times = [t for pts in series.values() for t, _ in pts]
    plot = Plot(x_label=f"last {int(max(times) - min(times))} s" if len(times) > 1 else "")
    if not times:
        return plot
    t0, t1 = min(times), max(times)
    plot.y_max = float(max([d for pts in busy.values() for _, d in pts] or [1]))
    for n, (name, pts) in enumerate(sorted(busy.items())):
        xs = _scale([t for t, _ in pts], t0, t1, PAD, WIDTH - PAD)
        ys = _scale([d for _, d in pts], 0, plot.y_max, HEIGHT - PAD, PAD)
        plot.lines.append(Line(name, _polyline(xs, ys), COLOURS[n % len(COLOURS)]))
    return plot


def score_plot(
    times: Sequence[float], scores: Sequence[float], windows: Sequence[tuple[float, float]]
) -> Plot:
    """A score curve over a video's duration with the chosen (start, end) windows shaded."""
    plot = Plot(x_label="seconds")
    if len(times) < 2:
        return plot
    t0, t1 = min(times), max(times)
    plot.y_max = float(max(scores) or 1.0)
    xs = _scale(times, t0, t1, PAD, WIDTH - PAD)
    ys = _scale(scores, 0, plot.y_max, HEIGHT - PAD, PAD)
    plot.lines.append(Line("score", _polyline(xs, ys), COLOURS[0]))
    for start, end in windows:
        x0, x1 = _scale([start, end], t0, t1, PAD, WIDTH - PAD)
        plot.windows.append((x0, max(x1 - x0, 2.0), start, end))
    return plot
