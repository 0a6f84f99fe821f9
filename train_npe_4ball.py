"""Train the classic Neural Physics Engine (the paper's architecture and RMSprop recipe)."""
from npe.cli import run_cli
from npe.train import train, train_parser


def main():
    args = train_parser("classic", __doc__).parse_args()
    train("classic", args)


if __name__ == "__main__":
    run_cli(main)
