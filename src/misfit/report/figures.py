"""The report's figures (matplotlib, PNG): learning curves, test metrics, diagnostics."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from misfit.core.files import json_float  # noqa: E402

UNITS = {"accuracy": "accuracy (%)", "mse": "MSE (strokes², log scale)"}


def _scaled(value, metric: str) -> float:
    value = json_float(value)
    if value is None or not math.isfinite(value):
        return math.nan
    return value * 100 if metric == "accuracy" else value


def per_epoch(histories: list[list[dict]], key: str, metric: str | None = None) -> tuple[np.ndarray, ...]:
    """(epochs, mean, std) of a per-epoch value over the seeds that reached each epoch."""
    longest = max((len(h) for h in histories), default=0)
    table = np.full((len(histories), longest), np.nan)
    for row, history in enumerate(histories):
        for record in history:
            value = record.get(key)
            table[row, record["epoch"] - 1] = _scaled(value, metric) if metric else (
                math.nan if value is None else float(value))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(table, axis=0) if longest else np.array([])
            std = np.nanstd(table, axis=0, ddof=1) if len(histories) > 1 and longest else np.zeros(longest)
    return np.arange(1, longest + 1), mean, np.nan_to_num(std)


def learning_curves(task: str, metric: str, curves: dict[str, list[list[dict]]], path: Path) -> None:
    """Valid metric per epoch, one line per cell: mean over the runs given (the caller
    passes one mode's runs), band = ± one std."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for cell, histories in curves.items():
        epochs, mean, std = per_epoch(histories, "valid_metric", metric)
        if not len(epochs) or np.all(np.isnan(mean)):
            continue
        (line,) = ax.plot(epochs, mean, label=cell, linewidth=1.4)
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    if metric == "mse":
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {UNITS[metric]}")
    ax.set_title(f"{task}: valid metric per epoch (mean over each cell's most common outcome, band ± 1 std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    _save(fig, path)


MODE_COLOURS = {"learned": "tab:blue", "constant": "tab:orange", "dead-relu": "tab:red",
                "worse-than-constant": "tab:purple", "diverged": "tab:brown", "failed": "black"}


def test_points(title: str, groups: dict[str, list[tuple[str, list[tuple[float | None, str]]]]],
                baselines: dict[str, float], path: Path) -> None:
    """Every run's test metric, one row per cell, coloured by outcome mode (no bars: a mean
    over runs in different modes would be no run's value), and a dashed line at what the
    best constant answer scores. One panel per task."""
    tasks = [task for task, rows in groups.items() if rows]
    if not tasks:
        return
    heights = [max(1, len(groups[t])) for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(9, 1.0 + 0.42 * sum(heights) + 0.5 * len(tasks)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    seen: set[str] = set()
    for ax, task in zip(axes[:, 0], tasks):
        rows = groups[task]
        metric = "mse" if task == "regression" else "accuracy"
        for y, (_, runs) in enumerate(rows):
            values = [(v, m) for v, m in runs if v is not None and math.isfinite(v)]
            if not values:
                modes = sorted({m for _, m in runs})
                ax.text(0.01, y, f"  no value: {len(runs)}/{len(runs)} {' or '.join(modes)}", va="center",
                        color="tab:red", fontsize=8, transform=ax.get_yaxis_transform())
            jitter = np.linspace(-0.18, 0.18, len(values)) if len(values) > 1 else [0.0]
            for (value, mode), dy in zip(values, jitter):
                ax.plot(_scaled(value, metric), y + dy, "o", ms=3.5, alpha=0.8, color=MODE_COLOURS[mode],
                        label=mode if mode not in seen else None)
                seen.add(mode)
        ax.axvline(_scaled(baselines[task], metric), color="grey", linestyle="--", linewidth=1,
                   label="best constant answer" if ax is axes[0, 0] else None)
        ax.set_yticks(np.arange(len(rows)), [cell for cell, _ in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        if metric == "mse":
            ax.set_xscale("log")
        ax.set_xlabel(f"test {UNITS[metric]}")
        ax.set_title(task, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    # every panel's entries (a mode may first appear in a later panel), above the first
    # panel beside its title: inside a panel it would hide points
    handles = [h for ax in axes[:, 0] for h in ax.get_legend_handles_labels()[0]]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                      ncol=len(handles), frameon=False)
    fig.suptitle(f"{title}: test metric of every run (main draw), coloured by outcome", fontsize=11)
    _save(fig, path)


def diagnostic_panels(title: str, keys: list[tuple[str, str]], curves: dict[str, list[list[dict]]],
                      path: Path) -> None:
    """One panel per diagnostic (key, axis label); one line per cell, mean over seeds."""
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys):
        log = key.startswith("grad_norm")  # gradients span many orders of magnitude
        for cell, histories in curves.items():
            epochs, mean, std = per_epoch(histories, key)
            if len(epochs) and not np.all(np.isnan(mean)):
                (line,) = ax.plot(epochs, mean, label=cell, linewidth=1.4)
                low = np.maximum(mean - std, mean * 0.1) if log else mean - std
                ax.fill_between(epochs, low, mean + std, color=line.get_color(), alpha=0.15)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def forest(task: str, comparisons: list[dict], path: Path) -> None:
    """Each compared pair's effect with its simultaneous interval, the equivalence margin
    shaded, on an axis zoomed to the intervals; P(X > Y) beside each row. From results.json."""
    rows = [c for c in comparisons if c["kind"] == "scores"]
    if not rows:
        return
    accuracy = rows[0]["metric"] == "accuracy"
    scale = (lambda v: v * 100) if accuracy else (lambda v: v)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    for y, entry in enumerate(rows):
        low, high = (scale(v) for v in entry["interval"])
        colour = {"undecided": "tab:gray", "equivalent": "tab:green"}.get(entry["verdict"], "tab:red")
        ax.plot([low, high], [y, y], color=colour, lw=2)
        ax.plot(scale(entry["estimate"]), y, "o", color=colour)
        share = entry.get("p_improvement")
        if share:
            ax.annotate(f"P(>) {share[0]:.2f} [{share[1]:.2f}, {share[2]:.2f}]", (1.01, y),
                        xycoords=("axes fraction", "data"), va="center", fontsize=7)
    margin = [scale(v) for v in rows[0]["margin"]]
    ax.axvspan(margin[0], margin[1], color="tab:green", alpha=0.12, label="equivalence margin")
    ax.axvline(0 if accuracy else 1, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{e['cell']} vs {e['other']}" for e in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("difference, accuracy points" if accuracy else "MSE ratio (log scale)")
    if not accuracy:
        ax.set_xscale("log")
    ax.set_title(f"{task}: each pair over every draw, simultaneous 95% intervals "
                 "(red differs, green equivalent, grey undecided)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def reliability(task: str, curves: dict[str, list[dict]], path: Path) -> None:
    """Per cell, the pooled reliability bins: mean confidence against the share that came true."""
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, label="calibrated")
    for cell_id, bins in curves.items():
        points = [(b["confidence"], b["observed"]) for b in bins if b["count"]]
        if points:
            ax.plot(*zip(*points), "o-", ms=3, label=cell_id)
    ax.set_xlabel("confidence")
    ax.set_ylabel("share that came true")
    ax.set_title(f"{task}: reliability, learned runs on every draw", fontsize=9)
    ax.legend(fontsize=6)
    _save(fig, path)
