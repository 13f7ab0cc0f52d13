"""The scaling scenario's picture: speed-up against worker processes, one panel per task
kind, one line per pool kind. matplotlib is optional (``pip install 'conveyor[plot]'``);
without it the plot is skipped with a message saying so, and the table stands alone."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_PLOT = "docs/scaling.png"
MISSING = (
    "matplotlib is not installed, so no plot was drawn (the table has every figure): "
    "pip install 'conveyor[plot]'"
)


def save_plot(points: Sequence[dict[str, Any]], path: str | Path, cpus: int | None) -> str:
    """Draw ``points`` (from :func:`conveyor.bench.scaling.run_scaling`) into a PNG at
    ``path``; returns the line to print: where it went, or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return MISSING
    kinds = sorted({p["kind"] for p in points})
    sizes = sorted({p["workers"] for p in points})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for pool in sorted({p["pool"] for p in points}):
            mine = sorted(
                (p for p in points if p["kind"] == kind and p["pool"] == pool),
                key=lambda p: p["workers"],
            )
            ax.plot([p["workers"] for p in mine], [p["speedup"] for p in mine], "o-", label=pool)
        ax.plot(sizes, [n / sizes[0] for n in sizes], "k:", label="linear")
        if cpus:
            ax.axvline(cpus, color="grey", linewidth=0.8, linestyle="--")
            ax.annotate(f"{cpus} cores", (cpus, 1), textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_title(f"{kind}-bound task")
        ax.set_xlabel("worker processes")
        ax.set_ylabel(f"speed-up over {sizes[0]} worker(s)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="pool")
    fig.suptitle(f"conveyor bench --scaling ({cpus or os.cpu_count()} CPUs)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return f"plot saved to {out}"
