"""The scaling study's figure (docs/training.md#scaling): cosine similarity at step 50, the kinetic-energy
ratio at step 100 and the ball-ball one-step velocity error of checkpoints labelled AXIS:VALUE (for example
samples:6.6M, scenes:35000, width:50), against VALUE, one column per axis. Reads what
compare_rollouts_classic_vs_modern.py --test_prefix wrote: its CSV and the _frames.csv beside it."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from any folder without an install

import pandas as pd  # noqa: E402

from npe.cli import NPEError, Parser, output_file, run_cli  # noqa: E402
from npe.files import regular_file  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from npe.plots import plt, save_figure  # noqa: E402

UNITS = {"K": 1e3, "M": 1e6}


def number(text):
    """'6.6M' -> 6.6e6, '35000' -> 35000.0."""
    return float(text[:-1]) * UNITS[text[-1]] if text[-1:] in UNITS else float(text)


def main():
    p = Parser(description=__doc__)
    p.add_argument("csv", type=Path, help="the comparison's CSV (100 rollout steps or more, with --test_prefix)")
    p.add_argument("--out_png", type=output_file(".png"), default=Path("docs/scaling.png"), help="figure (.png)")
    args = p.parse_args()
    hint = "write it with compare_rollouts_classic_vs_modern.py --test_prefix ... --rollout_steps 100"
    table = pd.read_csv(regular_file(args.csv, "comparison CSV", hint))
    frames = pd.read_csv(regular_file(args.csv.with_name(f"{args.csv.stem}_frames.csv"), "frames CSV", hint))
    runs = table[table.model.str.contains(":")]
    if runs.empty or runs.step.max() < 100:
        raise NPEError(f"{args.csv} holds no checkpoints labelled AXIS:VALUE rolled out for 100 steps")
    at = runs.pivot_table(index="model", columns="step", values=["cosine_similarity", "energy_ratio"])
    collisions = frames[frames.frame == "ball-ball collision"].set_index("model")["velocity error px/frame RMS"]
    points = pd.DataFrame({"cos@50": at["cosine_similarity"][50], "energy@100": at["energy_ratio"][100],
                           "ball-ball px/frame": collisions.reindex(at.index)})
    points["axis"], points["shown"] = zip(*(m.split(":", 1) for m in points.index))
    points["value"] = points.shown.map(number)
    axes_names = list(dict.fromkeys(points.axis))
    fig, grid = plt.subplots(3, len(axes_names), figsize=(4 * len(axes_names), 9), squeeze=False)
    for column, name in enumerate(axes_names):
        line = points[points.axis == name].sort_values("value")
        for row, metric in enumerate(["cos@50", "energy@100", "ball-ball px/frame"]):
            ax = grid[row, column]
            ax.plot(line.value, line[metric], "o-", color="tab:green")
            ax.set_xscale("log")
            ax.set_xticks(line.value, line.shown)  # the values run, as labelled, not powers of ten
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(name)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Next-state classic NPE, one axis changed at a time ({args.csv.name})")
    save_figure(fig, args.out_png)
    print(f"wrote {args.out_png}")


if __name__ == "__main__":
    run_cli(main)
