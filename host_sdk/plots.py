"""Figures: the network coloured by stiffness, and training curves.

Matplotlib with the Agg backend (files only, no windows). Every function returns the
:class:`matplotlib.figure.Figure` it drew; :func:`save_figures` writes the CLI's PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from numpy.typing import ArrayLike, NDArray  # noqa: E402

from .errors import ConfigError  # noqa: E402
from .physics import IOMap, Network  # noqa: E402
from .tasks import Experiment  # noqa: E402
from .training import History  # noqa: E402

__all__ = ["plot_network", "plot_curves", "save_figures"]

_AXIS = ("x", "y")


def plot_network(
    network: Network,
    k: ArrayLike,
    *,
    k_min: float | None = None,
    k_max: float | None = None,
    io: IOMap | None = None,
    paper_numbers: bool = False,
    removed: Sequence[tuple[int, int]] = (),
    title: str = "",
) -> Figure:
    """Draw the network with each bond coloured and sized by its stiffness.

    Args:
        network: positions in m (drawn in mm), bonds, fixed nodes.
        k: stiffness per bond ``(m,)``, N/m.
        k_min, k_max: colour scale limits, N/m (default: the range of ``k``).
        io: marks input nodes (arrow in the direction of a positive feature's force) and output
            nodes (square, with the measured axis).
        paper_numbers: label nodes with the paper's 1-based numbers instead of 0-based indices.
        removed: node pairs of cut bonds, drawn dashed grey.
        title: figure title.
    """
    kk = np.asarray(k, dtype=np.float64)
    if kk.shape != (network.n_bonds,):
        raise ConfigError(f"stiffness has shape {kk.shape}, the network has {network.n_bonds} bonds")
    lo = float(np.min(kk)) if k_min is None else float(k_min)
    hi = float(np.max(kk)) if k_max is None else float(k_max)
    if hi <= lo:
        hi = lo + 1.0
    pos = np.asarray(network.positions) * 1e3
    bonds = np.asarray(network.bonds)
    norm = Normalize(vmin=lo, vmax=hi)
    cmap = plt.get_cmap("viridis")

    fig, ax = plt.subplots(figsize=(7.0, 5.2), constrained_layout=True)
    if len(removed):
        cut = [np.array([pos[i], pos[j]]) for i, j in removed]
        ax.add_collection(LineCollection(cut, colors="0.6", linewidths=1.5, linestyles="--",
                                         label="cut bond"))
    widths = 1.5 + 4.5 * np.clip((kk - lo) / (hi - lo), 0.0, 1.0)
    segments = [pos[[i, j]] for i, j in bonds]
    lines = LineCollection(segments, colors=cmap(norm(kk)), linewidths=widths, capstyle="round")
    ax.add_collection(lines)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(sm, ax=ax, shrink=0.85)
    cbar.set_label("bond stiffness k (N/m)")

    fixed = np.asarray(network.fixed, dtype=np.intp)
    free = np.setdiff1d(np.arange(network.n_nodes), fixed)
    ax.scatter(pos[free, 0], pos[free, 1], s=40, c="white", edgecolors="black", zorder=3,
               label="free node")
    if fixed.size:
        ax.scatter(pos[fixed, 0], pos[fixed, 1], s=110, marker="^", c="black", zorder=3,
                   label="fixed node")
    span = float(np.ptp(pos[:, 0]) or np.ptp(pos[:, 1]) or 1.0)
    arrow = 0.09 * span
    if io is not None:
        for n_in, ((node, axis), scale) in enumerate(zip(io.inputs, io.input_scale)):
            d = np.zeros(2)
            d[axis] = np.sign(scale) or 1.0
            start = pos[node] - d * arrow
            ax.annotate("", xy=pos[node], xytext=start, zorder=4,
                        arrowprops=dict(arrowstyle="-|>", color="tab:red", lw=2))
            ax.scatter([pos[node, 0]], [pos[node, 1]], s=70, c="tab:red", zorder=4,
                       label="input (force)" if n_in == 0 else None)
        for n_out, (node, axis) in enumerate(io.outputs):
            ax.scatter([pos[node, 0]], [pos[node, 1]], s=90, marker="s", facecolors="none",
                       edgecolors="tab:blue",
                       linewidths=2, zorder=5, label="output (displacement)" if n_out == 0 else None)
            off = np.array([0.5, -0.5]) * 0.05 * span
            ax.annotate(f"u{_AXIS[axis]}", xy=pos[node], xytext=pos[node] + off, color="tab:blue",
                        fontsize=8, zorder=5)
    for node in range(network.n_nodes):
        label = str(node + 1) if paper_numbers else str(node)
        ax.annotate(label, xy=pos[node], xytext=(-10, 6), textcoords="offset points", fontsize=8,
                    color="0.25", zorder=6)

    pad = 0.12 * span
    ax.set_xlim(pos[:, 0].min() - pad, pos[:, 0].max() + pad)
    ax.set_ylim(pos[:, 1].min() - pad, pos[:, 1].max() + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    numbering = "paper node numbers (1-based)" if paper_numbers else "node indices (0-based)"
    note = f"{numbering}; bond width and colour: stiffness"
    ax.set_title(f"{title}\n{note}" if title else note, fontsize=9)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.85)
    return fig


def _stage_series(history: History, mixed: bool) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], list[int]]:
    """Loss, train and test metric along the whole run (stages joined), and stage starts."""
    loss: list[float] = []
    train: list[float] = []
    test: list[float] = []
    starts = []
    for i, stage in enumerate(history.stages):
        rows = slice(0, None) if i == 0 else slice(1, None)
        starts.append(len(loss))
        tr = np.asarray(stage.train[rows])
        te = np.asarray(stage.test[rows])
        if mixed and stage.metric == "relative_error":
            tr, te = 1.0 - tr, 1.0 - te
        loss.extend(stage.loss[rows])
        train.extend(tr.tolist())
        test.extend(te.tolist())
    return np.asarray(loss), np.asarray(train), np.asarray(test), starts


def _pad(series: list[NDArray[np.float64]]) -> NDArray[np.float64]:
    """Stack runs of different lengths (early stopping) by holding each run's last value."""
    n = max(s.size for s in series)
    return np.vstack([np.concatenate([s, np.full(n - s.size, s[-1])]) for s in series])


def plot_curves(histories: Sequence[History], *, title: str = "") -> Figure:
    """Loss and metric per epoch: one thin line per seed, the mean in bold.

    Stages of a multi-stage run are joined and separated by dotted lines. When stages mix
    classification and regression, regression is shown as accuracy = 1 - relative error (as in
    the paper); a pure regression run shows its relative error on a log scale.
    """
    if not histories:
        raise ConfigError("no histories to plot")
    metrics = {s.metric for h in histories for s in h.stages}
    mixed = len(metrics) > 1
    metric_name = "accuracy" if (mixed or metrics == {"accuracy"}) else "relative error"
    runs = [_stage_series(h, mixed) for h in histories]
    starts = runs[0][3]

    fig, (ax_loss, ax_met) = plt.subplots(1, 2, figsize=(11.0, 4.2), constrained_layout=True)
    losses = _pad([r[0] for r in runs])
    trains = _pad([r[1] for r in runs])
    tests = _pad([r[2] for r in runs])
    epochs = np.arange(losses.shape[1])
    for i in range(len(runs)):
        ax_loss.plot(epochs, losses[i], color="tab:purple", lw=0.7, alpha=0.35)
        ax_met.plot(epochs, trains[i], color="tab:orange", lw=0.7, alpha=0.35)
        ax_met.plot(epochs, tests[i], color="tab:green", lw=0.7, alpha=0.35)
    ax_loss.plot(epochs, losses.mean(axis=0), color="tab:purple", lw=2.4, label="train loss, mean")
    ax_met.plot(epochs, trains.mean(axis=0), color="tab:orange", lw=2.4, label=f"train {metric_name}, mean")
    ax_met.plot(epochs, tests.mean(axis=0), color="tab:green", lw=2.4, label=f"test {metric_name}, mean")
    if np.all(losses > 0):
        ax_loss.set_yscale("log")
    if metric_name == "relative error" and np.all(np.concatenate([trains, tests]) > 0):
        ax_met.set_yscale("log")
    names = [s.task for s in histories[0].stages]
    for ax in (ax_loss, ax_met):
        for s in starts[1:]:
            ax.axvline(s, color="0.5", ls=":", lw=1)
        if len(starts) > 1:
            for s, name in zip(starts, names):
                ax.text(s + 0.5, 0.99, name, transform=ax.get_xaxis_transform(), fontsize=7,
                        va="top", color="0.3")
        ax.set_xlabel("epoch (all stages)" if len(starts) > 1 else "epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_ylabel("loss (mean over training set)")
    ax_met.set_ylabel(metric_name + (" (regression: 1 - relative error)" if mixed else ""))
    stages = " -> ".join(s.task for s in histories[0].stages)
    seeds = ", ".join(str(h.seed) for h in histories)
    ax_loss.set_title("loss")
    ax_met.set_title(metric_name)
    fig.suptitle(f"{title or histories[0].task}: {stages}; seeds {seeds} (thin) and mean (bold)",
                 fontsize=10)
    return fig


def save_figures(out_dir: str | Path, experiment: Experiment, histories: Sequence[History]) -> list[Path]:
    """Write ``curves.png`` and ``network-seed<S>.png`` for every run; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig = plot_curves(histories, title=experiment.name)
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    last = experiment.stages[-1].task
    base = last.network
    paper = last.setup is not None and last.setup.network.n_nodes == base.n_nodes
    for h in histories:
        removed = [(int(p[0]), int(p[1])) for s in h.stages for p in s.removed_bonds]
        net = Network(base.positions, h.bonds, base.fixed, name=base.name)
        final = h.final()
        figures = ", ".join(f"{key.replace('_', ' ')} {value:.4g}" for key, value in final.items()
                            if key not in ("relative_error", "test_loss"))
        fig = plot_network(net, h.k, k_min=last.k_min, k_max=last.k_max, io=last.io,
                           paper_numbers=paper, removed=removed,
                           title=f"{experiment.name}, seed {h.seed}\n{figures}")
        path = out / f"network-seed{h.seed}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
