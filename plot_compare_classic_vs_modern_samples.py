"""Plot the training curves of any runs against samples seen: train and val loss from the metrics CSVs of
train_npe_4ball.py and train_npe_4ball_modern.py, on a log scale, each run in its model kind's colour and
the y axis labelled by the loss the CSVs hold (the next velocity's MSE, or a next-state model's loss)."""
from pathlib import Path

from npe.cli import NPEError, Parser, fraction, output_file, positive_int, run_cli
from npe.plots import plot_training_curves, read_training_curves


def main():
    p = Parser(description=__doc__)
    p.add_argument("--csvs", type=Path, nargs="+", default=None,
                   help="metrics CSVs to plot, any number (or name two with --classic_csv and --modern_csv)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="one legend label per CSV, in order (default: the file stems; with --classic_csv and "
                        "--modern_csv, 'classic (stem)' and 'modern (stem)')")
    p.add_argument("--classic_csv", type=Path, default=None, help="metrics CSV of a classic run")
    p.add_argument("--modern_csv", type=Path, default=None, help="metrics CSV of a modern run")
    p.add_argument("--out_png", type=output_file(".png"), default=Path("figs/train_val_classic_vs_modern.png"),
                   help="figure (.png)")
    p.add_argument("--smooth", type=fraction, default=0.0,
                   help="exponential moving average factor in [0, 1) over evaluations (0: none); a short run is "
                        "smoothed less, so that its trend shows")
    p.add_argument("--classic_batch_size", type=positive_int, default=50,
                   help="classic batch size, used only if its CSV has no samples_seen column (samples = step x batch)")
    p.add_argument("--modern_batch_size", type=positive_int, default=2048,
                   help="modern batch size, used only if its CSV has no samples_seen column (samples = step x batch)")
    args = p.parse_args()
    named = [(f"{kind} ({path.stem})", path, getattr(args, f"{kind}_batch_size"))
             for kind in ("classic", "modern") if (path := getattr(args, f"{kind}_csv"))]
    if args.csvs and named:
        raise NPEError("name metrics CSVs either with --csvs or with --classic_csv / --modern_csv, not both")
    named = named or [(path.stem, path, None) for path in args.csvs or []]
    if not named:
        raise NPEError("no metrics CSV to plot: name them with --csvs (or --classic_csv and --modern_csv)")
    labels = args.labels or [label for label, _, _ in named]
    if len(labels) != len(named):
        raise NPEError(f"--labels gives {len(labels)} labels for {len(named)} CSVs; give one per CSV")
    if len(set(labels)) < len(labels):
        raise NPEError(f"two CSVs would share the label {max(labels, key=labels.count)!r}; tell them apart with --labels")
    curves = {label: read_training_curves(path, batch) for label, (_, path, batch) in zip(labels, named)}
    plot_training_curves(curves, args.out_png, args.smooth)
    print(f"wrote {args.out_png}")


if __name__ == "__main__":
    run_cli(main)
