"""``insights.svg``: the insights report (``pinfs.ops.insights.insights``) drawn as four charts (issue #20).

What it is for: pins by status per backend, how long pending and failed pins have waited, CIDs by the
number of backends holding them, and how long ago each backend last synced, as one SVG a browser or
an image viewer opens. Drawn by matplotlib's SVG backend (its object API: no pyplot, no global figure
state); text stays text (``svg.fonttype: none``), so labels can be searched, copied and read by a
screen reader.

What it must not do: compute anything the report does not hold, or be imported before it is needed:
matplotlib costs ~0.5 s to import, and the mount must be ready in well under a second.

Threading: ``render_svg`` may be called from any thread; a lock serializes renders, since matplotlib's
rc settings (``rc_context``) are process-wide.
"""

from __future__ import annotations

import io
import threading
from datetime import datetime, timezone
from typing import Any

from pinfs.data.schema import FAILED, PENDING, STATUSES

COLOURS = {"stored": "#2e7d32", "pending": "#f9a825", "failed": "#c62828"}
NEUTRAL = "#616161"
TITLES = (
    "Pins by status per backend",
    "Age of pending and failed pins",
    "CIDs by number of backends holding them",
    "Last sync per backend",
)
_RC = {
    "svg.fonttype": "none",  # <text> elements, not glyph outlines
    "svg.hashsalt": "pinfs",  # stable element ids: the same report draws the same file
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_LOCK = threading.Lock()


def render_svg(report: dict[str, Any]) -> bytes:
    """The SVG document for one insights report."""
    import matplotlib
    from matplotlib.figure import Figure

    with _LOCK, matplotlib.rc_context(_RC):
        figure = Figure(figsize=(12, 8.5), layout="constrained")
        if "by_backend" not in report:  # the report itself failed: say why instead of drawing nothing
            _empty(figure.subplots(), "pinfs insights", f"no insights: {report.get('error', 'unknown error')}")
            return _svg(figure)
        top_left, top_right, bottom_left, bottom_right = figure.subplots(2, 2).flat
        _status_per_backend(top_left, report)
        _waiting_ages(top_right, report)
        _replication(bottom_left, report)
        _last_syncs(bottom_right, report)
        figure.suptitle(_headline(report), fontsize=15, fontweight="bold")
        return _svg(figure)


def _svg(figure: Any) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="svg", metadata={"Date": None})
    return out.getvalue()


def _headline(report: dict[str, Any]) -> str:
    backends = len(report.get("by_backend", {}))
    text = f"pinfs insights: {report.get('total_pins', 0):,} pins in {backends} backend{'s' * (backends != 1)}"
    generated = _parse(report.get("generated_at"))
    return text + (f" ({generated.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC)" if generated else "")


def _whole_numbers(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _empty(axes: Any, title: str, message: str) -> None:
    axes.set_title(title, loc="left", fontweight="bold")
    axes.text(0.5, 0.5, message, ha="center", va="center", color=NEUTRAL, transform=axes.transAxes)
    axes.set_axis_off()


def _status_per_backend(axes: Any, report: dict[str, Any]) -> None:
    title = TITLES[0]
    by_backend = report.get("by_backend", {})
    if not by_backend:
        _empty(axes, title, "no backends yet")
        return
    names = list(by_backend)[::-1]  # the first backend at the top
    left = [0] * len(names)
    for status in STATUSES:
        counts = [by_backend[name]["by_status"].get(status, 0) for name in names]
        axes.barh(names, counts, left=left, color=COLOURS[status], label=status)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    for index, total in enumerate(left):
        axes.annotate(f" {total:,}", (total, index), va="center", fontsize=9)
    axes.set_title(title, loc="left", fontweight="bold")
    axes.set_xlabel("pins")
    axes.set_xlim(0, max(max(left), 1) * 1.15)  # room for the totals
    _whole_numbers(axes.xaxis)
    axes.legend(loc="lower right", frameon=False, fontsize=9)


def _waiting_ages(axes: Any, report: dict[str, Any]) -> None:
    title = TITLES[1]
    by_status = report.get("age", {}).get("by_status", {})
    if not any(sum(by_status.get(status, {}).get("buckets", {}).values()) for status in (PENDING, FAILED)):
        _empty(axes, title, "no pending or failed pins")
        return
    buckets = list(by_status[PENDING]["buckets"])
    if not any(by_status[status]["buckets"].get("unknown") for status in (PENDING, FAILED)):
        buckets.remove("unknown")
    width = 0.4
    for offset, status in ((-width / 2, PENDING), (width / 2, FAILED)):
        counts = [by_status[status]["buckets"].get(bucket, 0) for bucket in buckets]
        bars = axes.bar([i + offset for i in range(len(buckets))], counts, width, color=COLOURS[status], label=status)
        axes.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], fontsize=8)
    axes.set_xticks(range(len(buckets)), buckets)
    axes.set_title(title, loc="left", fontweight="bold")
    axes.set_xlabel("time since the pin was created")
    axes.set_ylabel("pins")
    _whole_numbers(axes.yaxis)
    axes.legend(frameon=False, fontsize=9)


def _replication(axes: Any, report: dict[str, Any]) -> None:
    title = TITLES[2]
    copies = report.get("replication", {}).get("copies", {})
    if not copies:
        _empty(axes, title, "no CIDs yet")
        return
    ordered = sorted(copies.items(), key=lambda item: int(item[0]))
    labels = [f"{n} backend{'s' * (int(n) != 1)}" for n, _count in ordered]
    counts = [count for _n, count in ordered]
    colours = ["#1565c0" if int(n) > 1 else "#90a4ae" for n, _count in ordered]
    bars = axes.bar(labels, counts, color=colours)
    axes.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=9)
    axes.set_title(title, loc="left", fontweight="bold")
    axes.set_ylabel("distinct CIDs")
    axes.margins(y=0.12)
    _whole_numbers(axes.yaxis)


def _last_syncs(axes: Any, report: dict[str, Any]) -> None:
    title = TITLES[3]
    syncs = report.get("last_syncs", [])
    if not any(item.get("finished_at") for item in syncs):
        _empty(axes, title, "no sync recorded yet")
        return
    now = _parse(report.get("generated_at")) or datetime.now().astimezone()
    rows = syncs[::-1]
    seconds: list[float] = []
    for item in rows:
        finished = _parse(item.get("finished_at"))
        seconds.append(max((now - finished).total_seconds(), 0.0) if finished else 0.0)
    unit, size = _unit(max(seconds))
    values = [value / size for value in seconds]
    colours = [COLOURS[FAILED] if item.get("ok") is False else COLOURS["stored"] for item in rows]
    axes.barh([item["backend"] for item in rows], values, color=colours)
    for index, (item, value) in enumerate(zip(rows, values, strict=True)):
        if not item.get("finished_at"):
            text = " never synced"
        else:
            text = f" {value:.1f} {unit} ago" + (" (failed)" if item.get("ok") is False else "")
        axes.annotate(text, (value, index), va="center", fontsize=9, color=NEUTRAL)
    axes.set_title(title, loc="left", fontweight="bold")
    axes.set_xlabel(f"{unit} since the last sync finished")
    axes.set_xlim(0, max(max(values), 1) * 1.4)  # room for the labels


def _parse(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def _unit(seconds: float) -> tuple[str, float]:
    """The unit the ages of the last syncs read best in, and its length in seconds."""
    if seconds < 2 * 3600:
        return "minutes", 60.0
    if seconds < 3 * 86400:
        return "hours", 3600.0
    return "days", 86400.0
