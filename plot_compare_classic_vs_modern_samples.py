"""Plot the training curves of a classic and a modern NPE run against samples seen: train and val
loss from the metrics CSVs of train_npe_4ball.py and train_npe_4ball_modern.py, on a log scale."""
from pathlib import Path

from npe.cli import Parser, fraction, output_file, positive_int, run_cli
from npe.plots import plot_training_curves, read_training_curves


def main():
    p = Parser(description=__doc__)
    p.add_argument("--classic_csv", type=Path, required=True, help="metrics CSV of the classic run")
    p.add_argument("--modern_csv", type=Path, required=True, help="metrics CSV of the modern run")
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
    curves = {f"classic ({args.classic_csv.stem})": read_training_curves(args.classic_csv, args.classic_batch_size),
              f"modern ({args.modern_csv.stem})": read_training_curves(args.modern_csv, args.modern_batch_size)}
    plot_training_curves(curves, args.out_png, args.smooth)
    print(f"wrote {args.out_png}")


if __name__ == "__main__":
    run_cli(main)
