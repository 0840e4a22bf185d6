"""Rendering of a QFL episode: an ``ansi`` per-round table and an ``rgb_array`` of accuracy and cost curves.

The env records one small :class:`RoundRecord` per step (a tuple append); all formatting and plotting
happens here, only when ``render()`` is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["RoundRecord", "render_ansi", "render_rgb_array"]


class RoundRecord(NamedTuple):
    """One env step, as shown by the renderers (cumulative costs are running totals)."""

    round: int
    selected: int
    participants: int
    dropped: int
    lr: float
    local_steps: int
    val_accuracy: float
    val_loss: float
    total_bytes: float
    total_wall_time_s: float
    total_shots: float
    reward: float
    stopped: bool


_HEADER = (
    f"{'round':>5} {'sel':>4} {'part':>4} {'drop':>4} {'lr':>9} {'steps':>5} {'val_acc':>7} {'val_loss':>8} "
    f"{'MB':>9} {'time_s':>9} {'shots':>11} {'reward':>8}"
)


def render_ansi(history: Sequence[RoundRecord], title: str = "") -> str:
    """A per-round text table of the episode so far."""
    lines = [title] if title else []
    lines.append(_HEADER)
    lines.append("-" * len(_HEADER))
    for r in history:
        if r.stopped:
            lines.append(f"{r.round:>5} stop (val_acc {r.val_accuracy:.3f}, reward {r.reward:+.4f})")
            continue
        lines.append(
            f"{r.round:>5} {r.selected:>4} {r.participants:>4} {r.dropped:>4} {r.lr:>9.3g} "
            f"{r.local_steps:>5} {r.val_accuracy:>7.3f} {r.val_loss:>8.4f} {r.total_bytes / 1e6:>9.4f} "
            f"{r.total_wall_time_s:>9.3f} {int(r.total_shots):>11d} {r.reward:>+8.4f}"
        )
    return "\n".join(lines) + "\n"


def render_rgb_array(history: Sequence[RoundRecord], title: str = "", size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """Accuracy (left) and normalized cumulative costs (right) per round, as an ``[H, W, 3]`` uint8 image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 80
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax_acc, ax_cost = fig.subplots(1, 2)
    rows = [r for r in history if not r.stopped]
    rounds = np.array([r.round for r in rows])
    ax_acc.plot(rounds, [r.val_accuracy for r in rows], marker=".", color="tab:blue")
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_ylim(0.0, 1.0)
    ax_acc.grid(alpha=0.3)
    for key, label, color in (
        ("total_bytes", "bytes", "tab:orange"),
        ("total_wall_time_s", "wall time", "tab:green"),
        ("total_shots", "shots", "tab:red"),
    ):
        values = np.array([getattr(r, key) for r in rows], dtype=float)
        if len(values) and values[-1] > 0:
            ax_cost.plot(rounds, values / values[-1], label=label, color=color)
    ax_cost.set_xlabel("round")
    ax_cost.set_ylabel("cumulative cost / final")
    ax_cost.grid(alpha=0.3)
    if ax_cost.get_legend_handles_labels()[0]:
        ax_cost.legend(loc="upper left", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return image
