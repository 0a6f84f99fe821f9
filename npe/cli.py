"""What the scripts share: one exception type for every mistake a user can make, a parser whose
errors are one line, flag types that reject nonsense, and the wrapper that exits with status 2."""
import argparse
import math
import sys


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
