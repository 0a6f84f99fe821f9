"""Figures: training curves and rollout metrics (matplotlib, written atomically as PNG)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from .cli import NPEError  # noqa: E402
from .files import atomic_path  # noqa: E402

METRIC_LABELS = {"cosine_similarity": "cosine similarity (higher is better)",
                 "relative_magnitude_error": "relative magnitude error, mean (lower is better)"}


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_rollout_metrics(table, path, subtitle):
    """table: DataFrame with model, step and the metric columns -> a 2-panel PNG."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (metric, label) in zip(axes, METRIC_LABELS.items()):
        for model, rows in table.groupby("model", sort=False):
            ax.plot(rows.step, rows[metric], label=model.replace("_", " "),
                    linestyle="--" if model == "constant_velocity" else "-")
        ax.set(xlabel="rollout step", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Velocity prediction over autoregressive rollouts, {subtitle}")
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # leave the top for the suptitle
    save_figure(fig, path)


def plot_generalization(table, path, subtitle):
    """table: DataFrame of compare() rows with a world column -> a 2-panel PNG of each model's metrics
    per world, at step 10 (solid) and at the last step (dashed), like the paper's figures."""
    worlds = list(dict.fromkeys(table.world))
    last = table.step.max()
    fig, axes = plt.subplots(1, 2, figsize=(max(11, 1.6 * len(worlds) + 4), 4.5))
    for ax, (metric, label) in zip(axes, METRIC_LABELS.items()):
        for k, (model, rows) in enumerate(table.groupby("model", sort=False)):
            for step, style in sorted({10: "-", last: "--"}.items()):
                at = rows[rows.step == step].set_index("world").reindex(worlds)[metric]  # NaN: not run there
                ax.plot(range(len(worlds)), at, style, marker="o", color=f"C{k}",
                        label=f"{model.replace('_', ' ')}, step {step}")
        ax.set_xticks(range(len(worlds)), worlds, rotation=20, ha="right")
        ax.set(ylabel=label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")  # a model that blows up reaches many times the others' error
    axes[1].yaxis.set_major_formatter(PlainLogFormatter())
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels) // 2, fontsize=8)
    fig.suptitle(f"Rollouts in each world, {subtitle}")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))  # the legend below, the title above
    save_figure(fig, path)


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain decimals (0.8, not 8e-01), thinned as matplotlib thins them."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def read_training_curves(path, batch_size):
    """A metrics CSV of the training loop -> DataFrame with samples_seen, train_loss, val_loss.

    CSVs from before samples_seen was logged have only step; then samples = step x batch_size.
    """
    hint = "pass the --metrics_csv written by train_npe_4ball.py or train_npe_4ball_modern.py"
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise NPEError(f"metrics CSV not found: {path} ({hint})") from None
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
    """curves {model name: DataFrame from read_training_curves} -> train and val loss against samples seen.

    smooth: factor of an exponential moving average over evaluations (0: the raw values).
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, table), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        millions = table.samples_seen / 1e6
        for split, style in (("train", "-"), ("val", "--")):
            loss = table[f"{split}_loss"].ewm(alpha=1 - smooth, adjust=False).mean()
            ax.plot(millions, loss, style, color=colour, label=f"{name} {split}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    ax.set(xlabel="training samples seen (millions of windows)",
           ylabel="MSE of the predicted next velocity\n(velocity in units of the data's velocity-change std)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    smoothed = f", EMA smoothing {smooth:g}" if smooth else ""
    ax.set_title(f"Training curves: classic vs modern NPE{smoothed}\n"
                 "train: mean since the previous evaluation; val: whole val split; 1 ≈ predicting no change",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
