"""What the scripts share: one exception type for every mistake a user can make, a parser whose
errors are one line, flag types that reject nonsense, the experiment scripts' flags, and the wrapper
that exits with status 2."""
import argparse
import math
import sys
from pathlib import Path

from .config import LAYOUTS, World


class NPEError(Exception):
    """A problem with the user's input: a path, a file, a flag value."""

    exit_code = 2


class Interrupted(NPEError):
    """A run stopped by a signal after saving its state."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to each flag's help, except where the help says what None means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and every default shown in --help."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=_ShowDefaults, **kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _integer(text):
    """An integer, also written as 6e7; 2.5 is refused rather than cut to 2."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _number(kind, low, inclusive, name):
    def parse(text):
        try:
            value = kind(text) if kind is float else _integer(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite {kind.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is not {name}")
        return value
    return parse


positive_int = _number(int, 0, False, "a positive integer")
nonnegative_int = _number(int, 0, True, "a non-negative integer")
positive_float = _number(float, 0.0, False, "a positive number")
nonnegative_float = _number(float, 0.0, True, "a non-negative number")


def fraction(text):
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def list_of(item, choices=None):
    """A flag type for comma-separated values of type `item` (or from `choices`), without repeats: "3,4,5"."""
    def parse(text):
        values = [item(v.strip()) for v in text.split(",")]
        if choices is not None and not set(values) <= set(choices):
            raise argparse.ArgumentTypeError(f"{text!r}: each must be one of {', '.join(choices)}")
        if len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
        return tuple(values)
    return parse


def run_cli(main):
    """Run a script's main(); user errors print one line on stderr and exit 2."""
    try:
        main()
    except NPEError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside training; outputs are atomic, so nothing half-written stays
        print("error: interrupted; no output was left half-written", file=sys.stderr)
        sys.exit(130)


def add_experiment_flags(parser, ckpts_help, what, num_scenes, seed):
    """The flags of the scripts that run checkpoints in fresh scenes of several worlds: --ckpts, then
    --num_balls and --layout (each value its own world; default: the training world), --num_scenes, --seed."""
    parser.add_argument("--ckpts", type=Path, nargs="+", required=True, help=ckpts_help)
    parser.add_argument("--num_balls", type=list_of(positive_int), default=None,
                        help=f"numbers of balls {what}, each a world of its own, e.g. 6,7,8 (default: as in training)")
    parser.add_argument("--layout", type=list_of(str, LAYOUTS), default=None,
                        help=f"obstacle layouts {what}, each a world of its own: {', '.join(LAYOUTS)} "
                             f"(default: as in training)")
    parser.add_argument("--num_scenes", type=positive_int, default=num_scenes, help="fresh scenes per world")
    parser.add_argument("--seed", type=nonnegative_int, default=seed,
                        help="seed of the fresh scenes (not a training seed)")


def experiment_worlds(args, meta):
    """{label: changes to the training world} for every combination of --num_balls and --layout."""
    world = World.from_dict(meta["world"])
    counts = [(n,) for n in args.num_balls] if args.num_balls else [world.num_balls]
    layouts = [(name,) for name in args.layout] if args.layout else [world.layouts]
    return {f"{','.join(map(str, n))} balls, {','.join(lay)}": {"num_balls": n, "layouts": lay}
            for n in counts for lay in layouts}
