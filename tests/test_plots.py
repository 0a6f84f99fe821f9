"""Figures say what they show: smoothing never flattens a short run, log axes carry several readable
ticks."""
import pandas as pd
import pytest

import npe.plots
from npe.plots import plot_training_curves, readable_log_axis


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open."""
    kept = []
    monkeypatch.setattr(npe.plots, "save_figure", lambda fig, path: kept.append(fig))
    return kept


def test_heavy_smoothing_of_a_three_point_run_keeps_its_trend(figures):
    run = pd.DataFrame({"samples_seen": [1e5, 2e5, 3e5], "train_loss": [0.9, 0.8, 0.75],
                        "val_loss": [0.79, 0.765, 0.74]})
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
