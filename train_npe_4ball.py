"""Train the classic Neural Physics Engine (the paper's architecture and RMSprop recipe)."""
from npe.cli import run_cli
from npe.train import train, train_parser


def main():
    args = train_parser(
        "classic", __doc__, name="npe_classic", batch_size=50, total_samples=60_000_000, eval_every=2000,
        optimizer="rmsprop", lr=3e-4, weight_decay=0.0, schedule="constant", warmup_frac=0.0,
        max_grad_norm=0.0, noise_std=0.0,
    ).parse_args()
    train("classic", args)


if __name__ == "__main__":
    run_cli(main)
