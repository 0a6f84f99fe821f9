"""What the scripts share: one exception type for every mistake a user can make, a parser whose
errors are one line, flag types that reject nonsense, the experiment scripts' flags, and the wrapper
that exits with status 2."""
import argparse
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path


def _interrupted_while_loading(kind, value, traceback, previous=sys.excepthook):
    """Ctrl-C in a script of this repository before run_cli takes over (while torch loads, which takes
    seconds): the one line run_cli prints, not a traceback of the import it stopped. Any other exception,
    and a Ctrl-C in any other program that imports npe, is printed as Python prints it."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    script = main and Path(main).resolve().parent == REPO
    if issubclass(kind, KeyboardInterrupt) and script:
        print("error: interrupted; no output was left half-written", file=sys.stderr)
    else:
        previous(kind, value, traceback)


sys.excepthook = _interrupted_while_loading  # npe/__init__.py imports this module first, before torch

from .config import LAYOUTS, MAX_BALLS, MAX_MODEL_SIZE, MAX_STEPS, MAX_THREADS, World


class NPEError(Exception):
    """A problem with the user's input: a path, a file, a flag value."""

    exit_code = 2


class Interrupted(NPEError):
    """A run stopped by a signal after saving its state."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training, raised like Ctrl-C so that whatever cleans up after Ctrl-C (the simulation's
    worker processes, a temporary file, ffmpeg) cleans up after it too."""


def raise_terminated(signum, frame):
    raise Terminated


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to each flag's help, except where the help says what None means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and every default shown in --help; an argument holding a control
    character (a newline in a name) is refused, since every name a user gives may end up in a message or a
    file name, and a message must stay one line."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=_ShowDefaults, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if bad := [arg for arg in (sys.argv[1:] if args is None else args) if not str(arg).isprintable()]:
            self.error(f"argument {bad[0]!r} holds a control character (a newline, a tab); remove it")
        return super().parse_known_args(args, namespace)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _integer(text):
    """An integer, also written as 6e7; 2.5 is refused rather than cut to 2."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _number(kind, low, inclusive, name, high=math.inf):
    def parse(text):
        try:
            value = kind(text) if kind is float else _integer(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite {kind.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low or (value == low and not inclusive) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is not {name}")
        return value
    return parse


positive_int = _number(int, 0, False, "a positive integer")
nonnegative_int = _number(int, 0, True, "a non-negative integer")
switch = _number(int, 0, True, "0 (off) or 1 (on)", high=1)  # an option kept in a model config, which holds numbers
frame_rate = _number(float, 0.1, True, "a rate from 0.1 to 1,000 frames per second", high=1000)  # what encoders take
positive_float = _number(float, 0.0, False, "a positive number")
nonnegative_float = _number(float, 0.0, True, "a non-negative number")
# Seeds go to numpy's default_rng and torch.manual_seed; training also seeds a generator with seed + 1.
# The range of numpy's legacy seeds fits them all.
SEED_MAX = 2**32 - 1
random_seed = _number(int, 0, True, f"a seed from 0 to {SEED_MAX}", high=SEED_MAX)
# A million scenes of 4 balls are 14 GB of windows in memory at once; ten times that is what sharded
# generation across machines might reach, and a typo like 1e15 is refused at once rather than growing
# memory until the machine swaps.
MAX_SCENES = 10_000_000
scene_count = _number(int, 0, False, f"a number of scenes from 1 to {MAX_SCENES:,}", high=MAX_SCENES)
# Sizes that build something (a model's widths and depths, threads, balls, steps taken in a loop), bounded so
# that a typo is refused at once rather than ending in a MemoryError or a hang while it is built.
model_size = _number(int, 0, False, f"a size from 1 to {MAX_MODEL_SIZE:,}", high=MAX_MODEL_SIZE)
thread_count = _number(int, 0, True, f"a number of threads from 0 to {MAX_THREADS:,}", high=MAX_THREADS)
ball_count = _number(int, 0, False, f"a number of balls from 1 to {MAX_BALLS}", high=MAX_BALLS)
step_count = _number(int, 0, True, f"a number of steps from 0 to {MAX_STEPS:,}", high=MAX_STEPS)
# Masses are stored as float32: outside its normal range a mass becomes 0 (a static block) or inf.
FLOAT32_TINY, FLOAT32_MAX = 2.0**-126, (2 - 2.0**-23) * 2.0**127
ball_mass = _number(float, FLOAT32_TINY, True, f"a mass from {FLOAT32_TINY:.4g} to {FLOAT32_MAX:.4g} "
                    f"(float32's normal range)", high=FLOAT32_MAX)


def fraction(text):
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def output_file(suffix):
    """A flag type for an output file whose name ends in `suffix` (".png", ".csv"; any case): the files a
    script writes beside it take its name with their own suffixes, so another suffix could make two of
    its outputs one file (--out_png r.csv)."""
    def parse(text):
        path = Path(text)
        if path.suffix.lower() != suffix or path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is not a {suffix} file name (the other outputs take its "
                                             f"name with their own suffixes)")
        return path
    return parse


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
    # SIGTERM as Ctrl-C (training installs its own handler for both, and puts this one back).
    catch = (threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    previous = signal.signal(signal.SIGTERM, raise_terminated) if catch else None
    try:
        main()
    except NPEError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM outside training; outputs are atomic
        terminated = isinstance(err, Terminated)
        name, signum = ("terminated", signal.SIGTERM) if terminated else ("interrupted", signal.SIGINT)
        print(f"error: {name}; no output was left half-written", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        if catch:
            signal.signal(signal.SIGTERM, previous)
        if catch and main.__module__ == "__main__":
            # A script's work is done and said: a Ctrl-C or SIGTERM while the interpreter shuts down (in
            # multiprocessing's or tqdm's exit callbacks) would print "Exception ignored in atexit
            # callback" with a traceback, and still exit with the status decided here.
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)


def add_world_flags(parser, defaults=True):
    """--num_balls, --masses and --layout: the sets each scene draws its balls, their masses and its layout
    from. With defaults, the paper's 4 balls of mass 1 in the plain box; else each left out keeps the
    checkpoints' world (world_changes)."""
    def default(value):
        return value if defaults else None
    keep = "" if defaults else " (default: as in training)"
    parser.add_argument("--num_balls", type=list_of(ball_count), default=default("4"),
                        help=f"balls per scene, or a set to draw from per scene, e.g. 3,4,5{keep}")
    parser.add_argument("--masses", type=list_of(ball_mass), default=default("1"),
                        help=f"the mass of each ball is drawn from this set, e.g. 1,5,25{keep}")
    parser.add_argument("--layout", type=list_of(str, LAYOUTS), default=default("O"),
                        help=f"obstacle layout per scene, or a set to draw from: {', '.join(LAYOUTS)} "
                             f"(O: plain box; see docs/data.md){keep}")


def world_changes(args):
    """{World field: value} of the world flags given (add_world_flags(defaults=False))."""
    given = {"num_balls": args.num_balls, "masses": args.masses, "layouts": args.layout}
    return {field: value for field, value in given.items() if value is not None}


def add_threads_flag(parser):
    parser.add_argument("--threads", type=thread_count, default=0,
                        help="CPU threads for torch (0: OMP_NUM_THREADS if set, else the cores that other jobs "
                             "leave free when the script starts)")


def free_cores(seconds=0.2):
    """The cores this process may use less those that other processes kept busy over `seconds` (from
    /proc/stat), at least 1; all of them where /proc is not there."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def times():  # (all, idle) jiffies of every CPU together
        ticks = [int(t) for t in open("/proc/stat").readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # idle and iowait
    try:
        (all0, idle0), _, (all1, idle1) = times(), time.sleep(seconds), times()
    except (OSError, ValueError, IndexError):
        return cores
    busy = round((os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, all1 - all0)))
    return max(1, cores - busy)


def set_threads(requested):
    """Set torch's CPU threads to `requested` (0: auto, see add_threads_flag); returns the number.

    Torch's default, one thread per core, collapses when another job holds a core: its threads wait for
    each other. The quickstart's classic training (2-core AMD EPYC, two rounds) ran at 70,679-82,767
    samples/s with 2 threads alone; beside a second training run, at 14,654-17,378 with 2 threads and
    39,323-42,021 with 1, which auto picked there (34,329-41,845).
    """
    import torch  # here: the simulator's worker processes import this module and must not load torch
    if requested or "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(requested or free_cores())
    return torch.get_num_threads()


REPO = Path(__file__).resolve().parent.parent  # the repository (an editable install runs from it)
# The shipped 4-ball checkpoints, shown and compared when no checkpoint is named.
SHIPPED = [REPO / "pretrained" / name for name in ("npe_classic.pt", "npe_modern.pt", "npe_next_state.pt")]
SEED_KINDS = ("classic", "modern")  # the seed's --classic_ckpt and --modern_ckpt
# The rows that compare_rollouts_classic_vs_modern.py and evaluate_generalization.py add beside the checkpoints':
# no checkpoint may take their label, or its rows and theirs would be one model's.
BASELINES = ("simulator_oracle", "constant_velocity")


def shown_path(path):
    """`path` relative to the current folder where it lies inside it (pretrained/npe_classic.pt from the
    repository), else as it is: the default checkpoints resolve from any folder, and print short."""
    path = Path(path)
    return path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path


def add_checkpoint_flags(parser, ckpts_help, required=False):
    """--ckpts and --labels; unless `required`, also --classic_ckpt and --modern_ckpt (the seed's flags), and
    the shipped checkpoints (SHIPPED) when no checkpoint is named. checkpoint_paths() reads them."""
    default = "" if required else (" (default: the shipped pretrained/npe_classic.pt, npe_modern.pt and "
                                   "npe_next_state.pt)")
    parser.add_argument("--ckpts", type=Path, nargs="+", required=required, default=None,
                        help=f"{ckpts_help}; any kinds, trained in one world{default}")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one label per checkpoint, in order, for tables, legends, panels and video names "
                             "(default: the file stems; with both --classic_ckpt and --modern_ckpt, classic and "
                             "modern)")
    if not required:
        for kind in SEED_KINDS:
            parser.add_argument(f"--{kind}_ckpt", type=Path, default=None,
                                help=f"a {kind} NPE checkpoint; alone, just that model (same as --ckpts)")


def checkpoint_paths(args):
    """[(label, path, kind or None)] of the checkpoints named by add_checkpoint_flags' flags, in order."""
    named = [(path, kind) for kind in SEED_KINDS if (path := getattr(args, f"{kind}_ckpt", None))]
    if args.ckpts and named:
        raise NPEError("name checkpoints either with --ckpts or with --classic_ckpt / --modern_ckpt, not both")
    seed_pair = len(named) == len(SEED_KINDS)  # the seed's command, whose videos are named rollout_gt_classic_modern
    if args.ckpts:
        named = [(path, None) for path in args.ckpts]
    named = named or [(shown_path(path), None) for path in SHIPPED]
    labels = args.labels or [kind if seed_pair else path.stem for path, kind in named]
    if len(labels) != len(named):
        raise NPEError(f"--labels gives {len(labels)} labels for {len(named)} checkpoints; give one per checkpoint")
    if len(set(labels)) < len(labels):
        raise NPEError(f"two checkpoints would share the label {max(labels, key=labels.count)!r}; "
                       f"tell them apart with --labels")
    if bad := [label for label in labels if not label.strip() or "|" in label or not label.isprintable()]:
        raise NPEError(f"the label {bad[0]!r} is blank or holds a | or a control character, which would leave a row of "
                       f"the tables unnamed or break it; pick another with --labels")
    if taken := [label for label in labels if label in BASELINES]:
        raise NPEError(f"the label {taken[0]!r} is the name of a baseline whose rows the tables hold too; give "
                       f"that checkpoint another one with --labels")
    return [(label, path, kind) for label, (path, kind) in zip(labels, named)]


def add_experiment_flags(parser, ckpts_help, what, num_scenes, seed):
    """The flags of the scripts that run checkpoints in fresh scenes of several worlds: --ckpts and --labels,
    then --num_balls and --layout (each value its own world; default: the training world), --num_scenes, --seed,
    --threads."""
    add_checkpoint_flags(parser, ckpts_help, required=True)
    parser.add_argument("--num_balls", type=list_of(ball_count), default=None,
                        help=f"numbers of balls {what}, each a world of its own, e.g. 6,7,8 (default: as in training)")
    parser.add_argument("--layout", type=list_of(str, LAYOUTS), default=None,
                        help=f"obstacle layouts {what}, each a world of its own: {', '.join(LAYOUTS)} "
                             f"(default: as in training)")
    parser.add_argument("--num_scenes", type=scene_count, default=num_scenes,
                        help=f"fresh scenes per world (at most {MAX_SCENES:,})")
    parser.add_argument("--seed", type=random_seed, default=seed,
                        help="seed of the fresh scenes (not a training seed)")
    add_threads_flag(parser)


def experiment_worlds(args, meta):
    """{label: changes to the training world} for every combination of --num_balls and --layout."""
    world = World.from_dict(meta["world"])
    counts = [(n,) for n in args.num_balls] if args.num_balls else [world.num_balls]
    layouts = [(name,) for name in args.layout] if args.layout else [world.layouts]
    return {f"{','.join(map(str, n))} balls, {','.join(lay)}": {"num_balls": n, "layouts": lay}
            for n in counts for lay in layouts}
