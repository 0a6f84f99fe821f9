"""Figures: training curves and rollout metrics (matplotlib, written atomically as PNG), and the flag type
of the evaluation scripts' output files."""
import math

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # labels come from file names: a "$" is a dollar sign
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from .cli import NPEError  # noqa: E402
from .files import atomic_path, regular_file  # noqa: E402

METRIC_LABELS = {"cosine_similarity": "cosine similarity (higher is better)",
                 "relative_magnitude_error": "relative magnitude error, mean (lower is better)"}


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_rollout_metrics(table, path, subtitle):
    """table: DataFrame with model, step and the metric columns -> a 2-panel PNG; subtitle: what it shows."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (metric, label) in zip(axes, METRIC_LABELS.items()):
        for model, rows in table.groupby("model", sort=False):
            ax.plot(rows.step, rows[metric], label=model.replace("_", " "),
                    linestyle="--" if model == "constant_velocity" else "-")
        ax.set(xlabel="rollout step", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Velocity prediction over autoregressive rollouts\n{subtitle}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # leave the top for the title
    save_figure(fig, path)


def plot_generalization(table, path, subtitle, trained):
    """table: DataFrame of compare() rows with a world column -> a PNG of each model's metrics per world,
    one panel per metric and step (10 and the last), like the paper's figures. Worlds are categories,
    drawn as markers; those in `trained` (world labels) are shaded and starred."""
    worlds = list(dict.fromkeys(table.world))
    steps = sorted({min(10, table.step.max()), table.step.max()})
    models = list(dict.fromkeys(table.model))
    fig, axes = plt.subplots(len(METRIC_LABELS), len(steps), figsize=(max(10, 1.3 * len(worlds) * len(steps) + 3), 7.5),
                             squeeze=False)
    for row, (metric, label) in zip(axes, METRIC_LABELS.items()):
        for ax, step in zip(row, steps):
            for k, model in enumerate(models):
                at = table[(table.model == model) & (table.step == step)].set_index("world").reindex(worlds)[metric]
                offset = (k - (len(models) - 1) / 2) * 0.08  # side by side, so equal values stay visible
                ax.plot([i + offset for i in range(len(worlds))], at, linestyle="none", marker="os^Dv"[k % 5],
                        color=f"C{k}", label=model.replace("_", " "))
            for i, world in enumerate(worlds):
                if world in trained:
                    ax.axvspan(i - 0.45, i + 0.45, color="0.9", zorder=0)
            ax.set_xticks(range(len(worlds)), [f"{w} *" if w in trained else w for w in worlds],
                          rotation=20, ha="right")
            ax.set(title=f"step {step}", ylabel=label if ax is row[0] else None)
            ax.grid(alpha=0.3, axis="y")
            if metric == "relative_magnitude_error":
                readable_log_axis(ax, table[table.step == step][metric])  # a model that blows up errs many times more
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle(f"Rollouts in each world (* shaded: a training world)\n{subtitle}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.93))  # the legend below, the title above
    save_figure(fig, path)


def readable_log_axis(ax, values):
    """A log-scale y axis whose ticks are labelled as plain decimals, at least three in view: 1, 2, 5 per
    decade, or every digit, or evenly spaced when the values span less than that."""
    values = values[values > 0]
    ax.set_yscale("log")
    lo, hi = values.min(), values.max()
    ticks = []
    for digits in ((1, 2, 5), range(1, 10)):
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [d * 10.0**e for e in decades for d in digits if lo <= d * 10.0**e <= hi]
        if len(ticks) >= 3:
            break
    if len(ticks) < 3:
        ticks = [t for t in MaxNLocator(4).tick_values(lo, hi) if t > 0]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def read_training_curves(path, batch_size):
    """A metrics CSV of the training loop -> DataFrame with samples_seen, train_loss, val_loss.

    CSVs from before samples_seen was logged have only step; then samples = step x batch_size.
    """
    hint = "pass the --metrics_csv written by train_npe_4ball.py or train_npe_4ball_modern.py"
    try:
        table = pd.read_csv(regular_file(path, "metrics CSV", hint))  # a FIFO would hang the read
    except (OSError, ValueError) as err:  # a folder; empty, binary or malformed text (all ValueErrors)
        raise NPEError(f"cannot read metrics CSV {path}: {str(err).strip().splitlines()[0]} ({hint})") from None
    if "samples_seen" not in table and "step" in table:
        table["samples_seen"] = table["step"] * batch_size
    missing = [c for c in ("samples_seen", "train_loss", "val_loss") if c not in table]
    if missing or table.empty:
        what = f"lacks the columns {', '.join(missing)}" if missing else "has no rows"
        raise NPEError(f"metrics CSV {path} {what} ({hint})")
    table = table[["samples_seen", "train_loss", "val_loss"]]
    text = [c for c in table if not pd.api.types.is_numeric_dtype(table[c])]  # "nan" (a diverged run) is numeric
    if text:
        raise NPEError(f"metrics CSV {path} has values that are not numbers in {', '.join(text)} ({hint})")
    return table


def plot_training_curves(curves, path, smooth=0.0):
    """curves {label: DataFrame from read_training_curves} -> train and val loss against samples seen.

    smooth: factor of a bias-corrected exponential moving average over evaluations (0: none), lowered
    where a run is short so that the average never spans more than a twentieth of its evaluations; the
    raw values are drawn faintly beneath.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, table), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        millions = table.samples_seen / 1e6
        alpha = max(1 - smooth, min(1.0, 20 / len(table)))
        for split, style in (("train", "-"), ("val", "--")):
            raw = table[f"{split}_loss"]
            if alpha < 1:
                ax.plot(millions, raw, style, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(millions, raw.ewm(alpha=alpha).mean(), style, color=colour, label=f"{name} {split}")
    readable_log_axis(ax, pd.concat([t[f"{s}_loss"] for t in curves.values() for s in ("train", "val")]))
    ax.set(xlabel="training samples seen (millions of windows)",
           ylabel="MSE of the predicted next velocity\n(velocity in units of the data's velocity-change std)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    smoothed = f"; EMA {smooth:g} at most, raw values faint" if smooth else ""
    ax.set_title(f"Training curves{smoothed}\n"
                 "train: mean since the previous evaluation; val: whole val split; 1 ≈ predicting no change",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
