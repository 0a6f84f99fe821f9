"""Train the modern NPE: pre-norm residual MLP blocks, AdamW, warmup then cosine decay."""
from npe.cli import run_cli
from npe.train import train, train_parser


def main():
    args = train_parser("modern", __doc__).parse_args()
    train(args)


if __name__ == "__main__":
    run_cli(main)
