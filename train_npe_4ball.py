"""Train the classic Neural Physics Engine (the paper's architecture and RMSprop recipe), or with
--model one of the paper's baselines (NP, LSTM) with the same recipe."""
from npe.cli import run_cli
from npe.train import train, train_parser


def main():
    args = train_parser("classic", __doc__).parse_args()
    train(args)


if __name__ == "__main__":
    run_cli(main)
