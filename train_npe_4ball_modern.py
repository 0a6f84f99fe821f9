"""Train the modern NPE: pre-norm residual MLP blocks, AdamW, warmup then cosine decay."""
from npe.cli import run_cli
from npe.train import train, train_parser


def main():
    args = train_parser(
        "modern", __doc__, name="npe_modern", batch_size=2048, total_samples=200_000_000, eval_every=500,
        optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_frac=0.02,
        max_grad_norm=1.0, noise_std=0.0,
    ).parse_args()
    train("modern", args)


if __name__ == "__main__":
    run_cli(main)
