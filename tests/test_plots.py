"""Figures say what they show: smoothing never flattens a short run, log axes carry several readable
ticks, the y axis names the loss a metrics CSV holds, and each model kind and baseline has one colour in
every figure."""
import pandas as pd
import pytest

import npe.plots
from conftest import REPO, cli
from npe.plots import (COLOURS, plot_generalization, plot_rollout_metrics, plot_training_curves, read_training_curves,
                       readable_log_axis)

PLOT = "plot_compare_classic_vs_modern_samples.py"


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open."""
    kept = []
    monkeypatch.setattr(npe.plots, "save_figure", lambda fig, path: kept.append(fig))
    return kept


def test_heavy_smoothing_of_a_three_point_run_keeps_its_trend(figures):
    run = pd.DataFrame({"samples_seen": [1e5, 2e5, 3e5], "train_loss": [0.9, 0.8, 0.75],
                        "val_loss": [0.79, 0.765, 0.74], "predict": "velocity", "kind": None})
    plot_training_curves({"short": run}, "unused.png", smooth=0.98)
    lines = {line.get_label(): line.get_ydata() for line in figures[0].axes[0].get_lines()}
    val = lines["short val"]
    assert val[-1] == pytest.approx(0.74, abs=0.01) and val[0] - val[-1] > 0.04


@pytest.mark.parametrize("low,high", [(0.74, 0.79), (0.02, 1.0), (0.003, 40.0)])
def test_log_axis_labels_at_least_three_ticks_in_view_as_plain_numbers(figures, low, high):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [low, high])
    readable_log_axis(ax, pd.Series([low, high]))
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    labels = [ax.yaxis.get_major_formatter()(t) for t in ticks]
    plt.close(fig)
    assert len(ticks) >= 3 and all("e" not in label for label in labels if float(label) >= 0.001)


def metrics_csv(path, losses, model="classic", predict="velocity"):
    """A metrics CSV as training writes it, with train and val loss `losses` at each evaluation."""
    rows = [f"{k + 1},{(k + 1) * 1000},{v},{v},0.001,{k + 1.0},{model},{predict}" for k, v in enumerate(losses)]
    path.write_text("step,samples_seen,train_loss,val_loss,lr,elapsed_s,model,predict\n" + "\n".join(rows) + "\n")
    return path


def y_label(figures):
    return figures[-1].axes[0].get_ylabel()


def test_the_y_axis_names_the_loss_each_csv_holds(figures, tmp_path):
    velocity = read_training_curves(metrics_csv(tmp_path / "v.csv", [0.5, 0.3]))
    state = read_training_curves(metrics_csv(tmp_path / "s.csv", [2.0, 1.0], predict="state"))
    plot_training_curves({"v": velocity}, "unused.png")
    assert "next velocity" in y_label(figures)
    plot_training_curves({"s": state}, "unused.png")
    assert "next-state loss" in y_label(figures) and "position" in y_label(figures)
    plot_training_curves({"v": velocity, "s": state}, "unused.png")
    legend = [text.get_text() for text in figures[-1].axes[0].get_legend().get_texts()]
    assert legend == ["v train", "v val", "s train (next-state loss)", "s val (next-state loss)"]


def test_a_run_whose_losses_are_never_positive_is_drawn_on_a_linear_axis(figures, tmp_path):
    plot_training_curves({"zero": read_training_curves(metrics_csv(tmp_path / "z.csv", [0.0, 0.0]))}, "unused.png")
    assert figures[-1].axes[0].get_yscale() == "linear"


def test_runs_take_their_model_kinds_colour_and_share_one_only_by_line_style(figures, tmp_path):
    curves = {name: read_training_curves(metrics_csv(tmp_path / f"{name}.csv", [0.5, 0.3], model, predict))
              for name, model, predict in [("a", "classic", "velocity"), ("b", "classic", "state"),
                                           ("c", "classic", "velocity")]}
    plot_training_curves(curves, "unused.png")
    lines = {line.get_label(): line for line in figures[-1].axes[0].get_lines()}
    assert lines["a train"].get_color() == lines["c train"].get_color() == COLOURS["classic"]
    assert lines["b train (next-state loss)"].get_color() == COLOURS["classic next state"]
    assert lines["a train"].get_marker() != lines["c train"].get_marker()


def rollout_table(models, world="4 balls, O"):
    return pd.DataFrame([{"model": m, "step": s, "cosine_similarity": 0.9, "relative_magnitude_error": 0.1,
                          "world": world} for m in models for s in (1, 2)])


def test_the_oracle_and_constant_velocity_have_one_colour_in_every_figure(figures):
    plot_rollout_metrics(rollout_table(["mine", "simulator_oracle", "constant_velocity"]), "unused.png", "",
                         {"mine": "modern"})
    plot_rollout_metrics(rollout_table(["a", "b", "simulator_oracle", "constant_velocity"]), "unused.png", "",
                         {"a": "classic", "b": "classic next state"})
    plot_generalization(rollout_table(["a", "simulator_oracle", "constant_velocity"]), "unused.png", "", set(),
                        {"a": "lstm"})
    for fig in figures:
        colours = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
        assert colours["simulator oracle"] == COLOURS["simulator_oracle"]
        assert colours["constant velocity"] == COLOURS["constant_velocity"]
    assert {line.get_label(): line.get_color() for line in figures[1].axes[0].get_lines()}["b"] == \
        COLOURS["classic next state"]


def test_the_plot_script_takes_any_number_of_csvs_with_labels(tmp_path):
    paths = [metrics_csv(tmp_path / f"{k}.csv", [0.5, 0.3]) for k in range(3)]
    out = tmp_path / "curves.png"
    status, lines = cli(PLOT, "--csvs", *paths, "--labels", "mine", "theirs", "shipped", "--out_png", out)
    assert status == 0 and out.read_bytes().startswith(b"\x89PNG"), lines


def test_the_plot_script_reads_the_shipped_logs_by_their_stems(tmp_path):
    out = tmp_path / "curves.png"
    status, lines = cli(PLOT, "--csvs", *sorted((REPO / "pretrained").glob("npe_*.csv")), "--out_png", out)
    assert status == 0 and out.is_file(), lines


@pytest.mark.parametrize("flags,named", [
    (["--csvs", "{a}", "--classic_csv", "{a}"], "either with --csvs or with --classic_csv"),
    (["--csvs", "{a}", "{a}"], "share the label"),
    (["--csvs", "{a}", "--labels", "x", "y"], "--labels gives 2 labels for 1 CSVs"),
    ([], "no metrics CSV to plot"),
    (["--csvs", "{old}"], "--classic_csv or --modern_csv and its batch size"),
], ids=["both ways", "one label twice", "too many labels", "none", "an old log without samples_seen"])
def test_the_plot_script_refuses_what_it_cannot_plot_in_one_line(tmp_path, flags, named):
    a = metrics_csv(tmp_path / "a.csv", [0.5, 0.3])
    old = tmp_path / "old.csv"
    old.write_text("step,train_loss,val_loss\n1,0.5,0.4\n")
    out = tmp_path / "figs" / "p.png"
    status, lines = cli(PLOT, *[f.format(a=a, old=old) for f in flags], "--out_png", out)
    assert status == 2 and len(lines) == 1 and named in lines[0], lines
    assert not out.exists()
