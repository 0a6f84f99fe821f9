"""Figures: training curves and rollout metrics (matplotlib, written atomically as PNG), each model kind and
baseline in one colour in all of them and in the videos' titles."""
import math
import textwrap

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
# One colour per model kind, and whether it predicts the next state, and per baseline, in every figure;
# models of one kind in one figure are told apart by their line style (LINE_STYLES in turn), or in training
# curves, where the line style tells train from val, by markers (MARKERS in turn after the first).
COLOURS = {"classic": "tab:blue", "classic next state": "tab:green", "modern": "tab:orange",
           "modern next state": "tab:red", "paper": "tab:purple", "paper next state": "tab:pink",
           "np": "tab:brown", "np next state": "tab:cyan", "lstm": "tab:olive", "lstm next state": "navy",
           "simulator_oracle": "black", "constant_velocity": "tab:gray"}
OTHER_COLOUR = "darkgoldenrod"  # anything else, such as the chaos reference
LINE_STYLES = ["-", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D"]
# The loss a metrics CSV holds, by the --predict of its run (a CSV without that column predates next-state runs).
LOSS_LABELS = {"velocity": "MSE of the predicted next velocity\n(in units of the data's velocity-change std)",
               "state": "next-state loss: velocity MSE + position MSE\n(each in units of the std of its change "
                        "in the data)"}


def model_kind(model):
    """The key of a loaded model in COLOURS: its kind, and "next state" when it predicts positions too."""
    return f"{model.kind} next state" if model.dx_scale else model.kind


def kind_colours(kinds):
    """{label: (colour, n)} for kinds {label: COLOURS key} in order, n the labels of that kind before it."""
    styles, used = {}, {}
    for label, kind in kinds.items():
        used[kind] = used.get(kind, -1) + 1
        styles[label] = (COLOURS.get(kind, OTHER_COLOUR), used[kind])
    return styles


def line_styles(kinds):
    """{label: (colour, line style)} for kinds {label: COLOURS key} in order: constant velocity dashed,
    models of one kind in LINE_STYLES in turn."""
    return {label: (colour, "--" if kinds[label] == "constant_velocity" else LINE_STYLES[n % len(LINE_STYLES)])
            for label, (colour, n) in kind_colours(kinds).items()}


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_rollout_metrics(table, path, subtitle, kinds):
    """table: DataFrame with model, step and the metric columns -> a 2-panel PNG; subtitle: what it shows;
    kinds: {label: COLOURS key} of the models (baselines go by their names)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    styles = line_styles({m: kinds.get(m, m) for m in dict.fromkeys(table.model)})
    for ax, (metric, label) in zip(axes, METRIC_LABELS.items()):
        for model, rows in table.groupby("model", sort=False):
            colour, style = styles[model]
            ax.plot(rows.step, rows[metric], label=model.replace("_", " "), color=colour, linestyle=style)
        ax.set(xlabel="rollout step", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    title = "\n".join(["Velocity prediction over autoregressive rollouts",
                       *(textwrap.fill(line, 150) for line in subtitle.splitlines())])  # names of many checkpoints
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.034 * (title.count("\n") + 1)))  # leave the top for the title
    save_figure(fig, path)


def plot_generalization(table, path, subtitle, trained, kinds):
    """table: DataFrame of compare() rows with a world column -> a PNG of each model's metrics per world,
    one panel per metric and step (10 and the last), like the paper's figures. Worlds are categories,
    drawn as markers; those in `trained` (world labels) are shaded and starred. kinds: as plot_rollout_metrics'."""
    worlds = list(dict.fromkeys(table.world))
    steps = sorted({min(10, table.step.max()), table.step.max()})
    models = list(dict.fromkeys(table.model))
    colours = {m: colour for m, (colour, _) in kind_colours({m: kinds.get(m, m) for m in models}).items()}
    fig, axes = plt.subplots(len(METRIC_LABELS), len(steps), figsize=(max(10, 1.3 * len(worlds) * len(steps) + 3), 7.5),
                             squeeze=False)
    for row, (metric, label) in zip(axes, METRIC_LABELS.items()):
        for ax, step in zip(row, steps):
            for k, model in enumerate(models):
                at = table[(table.model == model) & (table.step == step)].set_index("world").reindex(worlds)[metric]
                offset = (k - (len(models) - 1) / 2) * 0.08  # side by side, so equal values stay visible
                ax.plot([i + offset for i in range(len(worlds))], at, linestyle="none", marker="os^Dv"[k % 5],
                        color=colours[model], label=model.replace("_", " "))
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
    decade, or every digit, or evenly spaced when the values span less than that. Linear where no value
    is positive (a log axis would have nothing to show)."""
    values = values[values > 0]
    if values.empty:
        return
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


def read_training_curves(path, batch_size=None):
    """A metrics CSV of the training loop -> DataFrame with samples_seen, train_loss, val_loss, and the
    model and predict of its run where the CSV names them.

    CSVs from before samples_seen was logged have only step; then samples = step x batch_size.
    """
    hint = "pass the --metrics_csv written by train_npe_4ball.py or train_npe_4ball_modern.py"
    try:
        table = pd.read_csv(regular_file(path, "metrics CSV", hint))  # a FIFO would hang the read
    except (OSError, ValueError) as err:  # a folder; empty, binary or malformed text (all ValueErrors)
        raise NPEError(f"cannot read metrics CSV {path}: {str(err).strip().splitlines()[0]} ({hint})") from None
    if "samples_seen" not in table and "step" in table and batch_size:
        table["samples_seen"] = table["step"] * batch_size
    missing = [c for c in ("samples_seen", "train_loss", "val_loss") if c not in table]
    if missing or table.empty:
        what = f"lacks the columns {', '.join(missing)}" if missing else "has no rows"
        old = " (an old log with step only: pass it with --classic_csv or --modern_csv and its batch size)"
        raise NPEError(f"metrics CSV {path} {what} ({hint}){old if missing == ['samples_seen'] else ''}")
    numbers = table[["samples_seen", "train_loss", "val_loss"]]
    text = [c for c in numbers if not pd.api.types.is_numeric_dtype(numbers[c])]  # "nan" (a diverged run) is numeric
    if text:
        raise NPEError(f"metrics CSV {path} has values that are not numbers in {', '.join(text)} ({hint})")
    predict = table["predict"].iloc[-1] if "predict" in table else "velocity"
    if predict not in LOSS_LABELS:
        raise NPEError(f"metrics CSV {path} has predict {predict!r}, not one of {', '.join(LOSS_LABELS)} ({hint})")
    kind = f"{table['model'].iloc[-1]}{' next state' if predict == 'state' else ''}" if "model" in table else None
    return numbers.assign(predict=predict, kind=kind)


def plot_training_curves(curves, path, smooth=0.0):
    """curves {label: DataFrame from read_training_curves} -> train and val loss against samples seen, in
    the colour of each run's model kind (COLOURS) where its CSV names it; the y axis names the loss, or
    each legend entry does when the runs' losses differ.

    smooth: factor of a bias-corrected exponential moving average over evaluations (0: none), lowered
    where a run is short so that the average never spans more than a twentieth of its evaluations; the
    raw values are drawn faintly beneath.
    """
    fig, ax = plt.subplots(figsize=(8, 5.4))
    cycle = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(curves))  # for CSVs that name no model
    styles = kind_colours({name: table.kind.iloc[0] or name for name, table in curves.items()})
    losses = {table.predict.iloc[0] for table in curves.values()}
    for name, table in curves.items():
        colour, n = styles[name] if table.kind.iloc[0] else (next(cycle), 0)
        marks = dict(marker=MARKERS[(n - 1) % len(MARKERS)], markevery=max(1, len(table) // 8)) if n else {}
        millions = table.samples_seen / 1e6
        alpha = max(1 - smooth, min(1.0, 20 / len(table)))
        which = " (next-state loss)" if len(losses) > 1 and table.predict.iloc[0] == "state" else ""
        for split, style in (("train", "-"), ("val", "--")):
            raw = table[f"{split}_loss"]
            if alpha < 1:
                ax.plot(millions, raw, style, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(millions, raw.ewm(alpha=alpha).mean(), style, color=colour, label=f"{name} {split}{which}",
                    **marks)
    readable_log_axis(ax, pd.concat([t[f"{s}_loss"] for t in curves.values() for s in ("train", "val")]))
    ylabel = LOSS_LABELS[losses.pop()] if len(losses) == 1 else "loss: velocity MSE (next-state runs: + position MSE)"
    ax.set(xlabel="training samples seen (millions of windows)", ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    smoothed = f"; EMA {smooth:g} at most, raw values faint" if smooth else ""
    ax.set_title(f"Training curves{smoothed}; 1 per MSE term ≈ predicting no change\n"
                 "train: mean since the previous evaluation, on the inputs trained on (with --pushforward the "
                 "model's own\nrolled-out inputs, so it sits above val); val: the whole val split, true inputs",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
