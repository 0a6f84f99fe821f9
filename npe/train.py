"""One training loop for every model: the dataset lives on the training device, shuffled batches
are drawn by index, validation runs on the whole val split, and a metrics CSV and a resumable
checkpoint are (re)written atomically at every evaluation, every --save_every steps and on a stop.
Under torchrun, each process trains on its share of every batch (npe/distributed.py).

fit() is the loop; each thing it does when due (checks, validation, saving, stopping) is a function
of its own, working on the Run that prepare() builds and its TrainState. npe/runs.py checks the run's
files and holds its name while it trains."""
import argparse
import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed, rollouts
from .checkpoint import build_checked, load_checkpoint, save_checkpoint
from .cli import (Interrupted, NPEError, Parser, add_threads_flag, fraction, nonnegative_float, positive_float,
                  positive_int, random_seed, set_threads, step_count)
from .config import POS, VEL, is_ball
from .data import load_meta, load_split
from .files import save_text
from .models import (MODELS, data_config, loss, one_step_loss, position_step, prediction_errors,
                     size_defaults)
from .runs import claim_run, drop_replaced, run_files, total_steps
from .threads import ThreadTuner, adaptive_counts, thread_text

# model and predict say which loss the run logs (a plot labels its axis by them); rows resumed from a run
# saved before they were logged leave them empty.
CSV_COLUMNS = ["step", "samples_seen", "train_loss", "val_loss", "lr", "elapsed_s", "model", "predict"]
# The defaults that differ between the two training scripts (npe.bench measures these recipes too).
RECIPES = {
    "classic": dict(model="classic", batch_size=50, total_samples=60_000_000, eval_every=2000,
                    optimizer="rmsprop", lr=3e-4, weight_decay=0.0, schedule="constant", warmup_frac=0.0,
                    max_grad_norm=0.0, noise_std=0.0, pushforward=0),
    "modern": dict(model="modern", batch_size=2048, total_samples=200_000_000, eval_every=500,
                   optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_frac=0.02,
                   max_grad_norm=1.0, noise_std=0.0, pushforward=0),
}
# Flags that shape a run, beside the model's sizes (its config) and the effective batch: --resume
# refuses to continue a run with different ones.
RESUME_FLAGS = ["model", "predict", "total_samples", "optimizer", "lr", "weight_decay", "schedule", "warmup_frac",
                "max_grad_norm", "noise_std", "pushforward", "unroll", "seed", "amp"]
# Flags added after runs were saved without them: such a run trained as their value here.
ADDED_FLAGS = {"predict": "velocity", "pushforward": 0, "unroll": 1}


def train_parser(recipe, description):
    """The flags of both training scripts, with the defaults of `recipe` ("classic" or "modern")."""
    p = Parser(description=description)
    p.add_argument("--dataset_prefix", required=True, help="prefix given to generate_dataset_4ball.py --out_prefix")
    p.add_argument("--model", choices=list(MODELS),
                   help="model to train (npe/models.py); np and lstm are the paper's baselines")
    p.add_argument("--predict", choices=["velocity", "state"], default="velocity",
                   help="velocity: the paper's model of the next velocity, positions integrated as x + v dt; "
                        "state: also the next position, so a rollout places each ball where the model says")
    names = ", ".join(f"{cls.run_name} for {kind}" for kind, cls in MODELS.items())
    p.add_argument("--name", default=None, help=f"run name: checkpoint is CKPT_DIR/NAME.pt (default: {names})")
    p.add_argument("--ckpt_dir", type=Path, default=Path("checkpoints"), help="folder for the checkpoint")
    p.add_argument("--metrics_csv", type=Path, default=None, help="metrics CSV file (default: logs/NAME.csv)")
    p.add_argument("--batch_size", type=positive_int,
                   help="windows per step and process (under torchrun the effective batch is this x processes)")
    p.add_argument("--total_samples", type=positive_int, help="windows to train on in all (steps = this / batch)")
    p.add_argument("--eval_every", type=positive_int, help="steps between validations (each also saves)")
    p.add_argument("--save_every", type=positive_int, default=1000,
                   help="steps between checkpoints (also saved at every validation, on Ctrl-C and at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in CKPT_DIR/NAME.pt (same flags) where it stopped")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run even where CKPT_DIR/NAME.pt holds an unfinished one, replacing it "
                        "(default: refuse; a finished run is replaced without it)")
    p.add_argument("--stop_after_steps", type=positive_int, default=None,
                   help="save and stop after this many steps in all, for a later --resume (default: run to the end)")
    p.add_argument("--optimizer", choices=["rmsprop", "adamw"], help="optimizer")
    p.add_argument("--lr", type=positive_float, help="peak learning rate")
    p.add_argument("--weight_decay", type=nonnegative_float, help="weight decay")
    p.add_argument("--schedule", choices=["constant", "cosine"], help="learning-rate schedule after warmup")
    p.add_argument("--warmup_frac", type=fraction, help="fraction of steps with a linear warmup")
    p.add_argument("--max_grad_norm", type=nonnegative_float, help="gradient clipping norm (0: off)")
    p.add_argument("--noise_std", type=nonnegative_float,
                   help="std of Gaussian noise added to the balls' input positions and velocities (normalized "
                        "units); the target stays the true next state, so the model learns to correct it")
    p.add_argument("--pushforward", type=step_count,
                   help="train on inputs the model itself rolled out: each window's inputs come from up to this "
                        "many of its own steps (drawn uniformly from 0 to it, no gradient through them) from an "
                        "earlier window of the scene; 0: the true inputs")
    p.add_argument("--unroll", type=positive_int, default=1,
                   help="steps the loss follows the model's own predictions, with gradient through them: each window "
                        "and the next unroll - 1 of its scene are predicted in a chain and their losses averaged")
    p.add_argument("--seed", type=random_seed, default=0, help="seed for initialization and batch order")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    add_threads_flag(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile_mode", choices=["default", "reduce-overhead", "max-autotune"], default="default",
                   help="with --compile: torch.compile's mode (reduce-overhead replays CUDA graphs, which cuts "
                        "the launch overhead of these small MLPs on a GPU)")
    p.add_argument("--amp", choices=["off", "bf16"], default="off",
                   help="bf16: run the training forward pass and loss under bfloat16 autocast (validation "
                        "stays float32)")
    p.add_argument("--no_pin_memory", action="store_true",
                   help="accepted for older commands; the dataset lives on the training device, nothing is pinned")
    owners = {}  # each model's size flags, declared by the model: {name: [kinds]}, a shared one registered once
    for kind, cls in MODELS.items():
        for name in cls.flags:
            owners.setdefault(name, []).append(kind)
    for name, kinds in owners.items():
        flag_type, text = MODELS[kinds[0]].flags[name]
        p.add_argument(f"--{name}", type=flag_type, default=None,
                       help=f"--model {', '.join(kinds)} only: {text} (default: {size_defaults(kinds[0])[name]})")
    p.set_defaults(**RECIPES[recipe])
    return p


def model_sizes(args):
    """{flag: value} of the size flags of args.model, its defaults filled in; another model's size
    flag is refused rather than ignored."""
    sizes = size_defaults(args.model)
    for kind, cls in MODELS.items():
        for name in cls.flags:
            if getattr(args, name) is not None and name not in sizes:
                raise NPEError(f"--{name} is a flag of the {kind} model, not of --model {args.model}")
            if getattr(args, name) is not None:
                sizes[name] = getattr(args, name)
    return sizes


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NPEError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def velocity_change_std(windows):
    """Std of v(t+1) - v(t) of the balls in a split [W, 3, N, 5], x and y pooled (keeps the model isotropic)."""
    moving = is_ball(windows[:, 1])  # [W, N]
    return (windows[:, 2, :, VEL] - windows[:, 1, :, VEL])[moving].std().item()


def position_residual_std(windows, pos_step):
    """Std of x(t+1) - x(t) - pos_step v(t+1) of the balls in a split [W, 3, N, 5], x and y pooled: how far
    the integration rule is off, which is 0 but in frames where a ball collides."""
    moving = is_ball(windows[:, 1])  # [W, N]
    residual = windows[:, 2, :, POS] - windows[:, 1, :, POS] - pos_step * windows[:, 2, :, VEL]
    return residual[moving].std().item()


def new_config(args, meta, train_set):
    """A new model's config: what follows from the data, and its sizes from the flags."""
    dx_scale = position_residual_std(train_set, position_step(meta)) if args.predict == "state" else 0.0
    config = data_config(args.model, meta, velocity_change_std(train_set), dx_scale)
    if dx_scale and "dx_scale" not in config:
        raise NPEError(f"the {args.model} model predicts velocities only (its constructor takes no dx_scale); "
                       f"train it without --predict state")
    return {**config, **model_sizes(args)}


def lr_lambda(schedule, warmup_steps, total_steps):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_optimizer(args, params):
    # foreach: one kernel per operation over all parameters rather than one per parameter (the default on a
    # GPU only); the same arithmetic, faster on a CPU for these many small tensors.
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, foreach=True)
    return torch.optim.RMSprop(params, lr=args.lr, weight_decay=args.weight_decay, foreach=True)


def write_csv(rows, path):
    lines = [",".join(CSV_COLUMNS)] + [",".join(str(r.get(c, "")) for c in CSV_COLUMNS) for r in rows]
    save_text("\n".join(lines) + "\n", path)


class StopSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM only ask the loop to stop after the current step.

    `received` is set by agree(), once per step: under torchrun every process then stops after the same
    step (one step after the signal), whichever of them got it.
    """

    def __enter__(self):
        self.received = self.asked = None
        self.vote = distributed.Vote()
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.asked = signal.Signals(signum)

    def agree(self):
        agreed = self.vote(self.asked.value if self.asked else 0)
        self.received = signal.Signals(agreed) if agreed else None

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass
class TrainState:
    """Where a run stands; save_run writes it into every checkpoint (`order` as the state that redraws it)."""

    step: int = 0
    seen: int = 0  # windows trained on, all processes together
    cursor: int = 0  # position in the epoch's shuffled order of the train windows
    rows: list = field(default_factory=list)  # the metrics CSV so far
    running: torch.Tensor = None  # train loss summed on the device since the last validation: no sync per step
    first_bad: torch.Tensor = None  # the first step with a non-finite loss (0: none), on the device
    best_val: float = math.inf
    started: float = 0.0  # time.time() at which the run would have started had it never stopped
    epoch_state: torch.Tensor = None  # the shuffle generator's state that draws `order`
    order: torch.Tensor = None  # [W] this epoch's order


@dataclass
class Run:
    """Everything a training run works with, built once by prepare()."""

    args: argparse.Namespace
    device: torch.device
    meta: dict
    train_set: torch.Tensor  # [W, 3, N, 5] on the device
    val_part: torch.Tensor  # this process's share of the val split
    config: dict
    model: torch.nn.Module  # saved, validated; the one with clean state dict keys
    replicated: torch.nn.Module  # training steps run through this: DDP around `model` under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    shuffle: torch.Generator  # the batch order; a resumed run redraws its epoch from the saved state
    noise: torch.Generator  # input noise and pushforward steps: apart from the epoch's order
    steps: int
    effective_batch: int  # windows per step, all processes together
    ckpt_path: Path
    best_path: Path
    csv_path: Path
    saved_args: dict
    state: TrainState
    threads: ThreadTuner | contextlib.nullcontext  # times each step on the CPU, to adapt torch's threads to the load


def train(args):
    """Train args.model with the parsed flags of train_parser; returns the checkpoint path.

    Under torchrun every process runs this, on its own device (cuda:LOCAL_RANK) and share of each batch.
    """
    args.name = args.name or MODELS[args.model].run_name
    args.metrics_csv = args.metrics_csv or Path("logs") / f"{args.name}.csv"
    with distributed.process_group(pick_device(args.device)) as device, claim_run(args):
        return fit(prepare(args, device))


def fit(run):
    """The loop: a step per batch; when due, checks, validation and a checkpoint; then a stop or the end."""
    args, state = run.args, run.state
    if args.stop_after_steps and state.step >= args.stop_after_steps:
        print(f"{run.ckpt_path} is already at step {state.step:,}, at or past --stop_after_steps "
              f"{args.stop_after_steps:,}: nothing to train")
        return run.ckpt_path
    announce(run)
    run.model.train()
    session_start, session_seen = time.time(), state.seen
    with StopSignals() as stop, tqdm(total=run.steps, initial=state.step, unit="step", desc=f"train {args.model}",
                                   disable=not distributed.is_main()) as bar:
        while state.step < run.steps:
            with run.threads:
                train_step(run, next_batch(run))
            bar.update()
            stop.agree()
            validating = state.step % args.eval_every == 0 or state.step == run.steps
            stopping = bool(stop.received) or state.step == args.stop_after_steps
            if validating or stopping or state.step % args.save_every == 0:
                check_finite(run)
                if validating:
                    validate(run)
                    rate = (state.seen - session_seen) / (time.time() - session_start)
                    bar.set_postfix(train=state.rows[-1]["train_loss"], val=state.rows[-1]["val_loss"],
                                    samples_s=f"{rate:,.0f}")
                save_run(run)
            if stopping:
                break
    return finish(run, stop.received)


def prepare(args, device):
    """The data on the device, the model (new, or as saved with --resume), its optimizer and state."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats slowed RMSprop ~25x mid-run on CPU
    else:
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for float32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    meta = load_meta(args.dataset_prefix)
    train_set = load_split(args.dataset_prefix, "train", meta).to(device)  # [W, 3, N, 5]
    val_set = load_split(args.dataset_prefix, "val", meta).to(device)
    effective_batch = args.batch_size * distributed.world_size()
    if effective_batch > len(train_set):
        raise NPEError(f"the effective batch {effective_batch} (--batch_size x processes) is larger than the "
                       f"training split ({len(train_set)} windows); use a smaller batch or more scenes")
    if args.unroll > meta["windows_per_scene"]:
        raise NPEError(f"--unroll {args.unroll} is longer than a scene ({meta['windows_per_scene']} windows)")
    if len(val_set) < distributed.world_size():
        raise NPEError(f"the val split ({len(val_set)} windows) has fewer windows than there are processes")
    ckpt_path, best_path, _, csv_path = run_files(args)
    saved_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    saved_args.update(world_size=distributed.world_size(), effective_batch=effective_batch)
    resume = load_resumable(ckpt_path, args, meta) if args.resume else None
    tuner = contextlib.nullcontext()
    if device.type == "cpu":  # a resumed run keeps its thread count unless told: another one rounds differently
        threads = args.threads or (resume["args"].get("cpu_threads", 0) if resume else 0)
        counts = adaptive_counts(threads) if distributed.world_size() == 1 else None
        chosen = set_threads(threads)  # the count to start from, when it adapts
        saved_args["cpu_threads"] = 0 if counts else chosen  # 0: adapted to the load again when resumed
        tuner = ThreadTuner(counts) if counts else tuner

    torch.manual_seed(args.seed)
    config = resume["config"] if resume else new_config(args, meta, train_set)
    weights, source = (resume["state_dict"], str(ckpt_path)) if resume else (None, "the size flags")
    model = build_checked(args.model, config, weights, source).to(device)  # refused before a huge one is built
    optimizer = make_optimizer(args, model.parameters())
    steps = total_steps(args.total_samples, effective_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.schedule, int(args.warmup_frac * steps), steps))
    state = TrainState(running=torch.zeros((), device=device), started=time.time(),
                       first_bad=torch.zeros((), dtype=torch.long, device=device))
    run = Run(args=args, device=device, meta=meta, train_set=train_set, val_part=distributed.share(val_set),
              config=config, model=model, replicated=model, optimizer=optimizer, scheduler=scheduler,
              shuffle=torch.Generator(device=device).manual_seed(args.seed),
              noise=torch.Generator(device=device).manual_seed(args.seed + 1),
              steps=steps, effective_batch=effective_batch, ckpt_path=ckpt_path, best_path=best_path,
              csv_path=csv_path, saved_args=saved_args, state=state, threads=tuner)
    if resume:
        restore(run, resume)
    distributed.seed_per_rank(args.seed, run.state.step)
    new_epoch(run)
    if args.compile:
        model.compile(mode=args.compile_mode)  # in place, so the state dict keys stay clean
    run.replicated = distributed.replicate(model)
    return run


def load_resumable(path, args, meta):
    """The checkpoint of the run to resume, checked to continue the same run: same data, same flags
    that shape training (the model's sizes and the effective batch included), saved training state."""
    if not path.is_file():
        raise NPEError(f"nothing to resume: {path} not found (check --name and --ckpt_dir)")
    ckpt = load_checkpoint(path, args.model)
    if "train_state" not in ckpt:
        raise NPEError(f"{path} has no training state to resume from (a best-val checkpoint?)")
    for key in ("world", "seed", "scenes"):
        if ckpt["meta"].get(key) != meta.get(key):
            raise NPEError(f"{path} was trained on other data ({key}: {ckpt['meta'].get(key)} vs "
                           f"{meta.get(key)} in {args.dataset_prefix}); resume with its --dataset_prefix")
    saved = {**ADDED_FLAGS, **ckpt["args"]}
    changed = [f"--{k} was {saved.get(k)}, now {getattr(args, k)}" for k in RESUME_FLAGS
               if saved.get(k) != getattr(args, k)]
    sizes = {**size_defaults(args.model), **ckpt["config"]}  # a size added since the run was saved: its default
    changed += [f"--{k} was {sizes.get(k)}, now {v}" for k, v in model_sizes(args).items() if sizes.get(k) != v]
    if saved.get("effective_batch") != args.batch_size * distributed.world_size():
        changed.append(f"the effective batch (--batch_size x processes) was {saved.get('effective_batch')} "
                       f"({saved.get('batch_size')} x {saved.get('world_size')}), now "
                       f"{args.batch_size} x {distributed.world_size()}")
    if changed:
        raise NPEError(f"--resume continues the run in {path} with its own flags: {'; '.join(changed)}")
    return ckpt


def restore(run, ckpt):
    """Weights, optimizer, schedule, random generators and counters as saved by save_run."""
    saved, state = ckpt["train_state"], run.state
    run.model.load_state_dict(ckpt["state_dict"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.noise.set_state(saved["noise_generator"])
    torch.set_rng_state(saved["torch_rng"])
    run.shuffle.set_state(saved["epoch_shuffle_state"])  # new_epoch() then redraws the saved epoch's order
    state.step, state.seen, state.cursor, state.rows = saved["step"], saved["seen"], saved["cursor"], saved["rows"]
    state.running.fill_(saved["running"])
    state.best_val, state.started = saved["best_val"], time.time() - saved["elapsed_s"]


def announce(run):
    state, args = run.state, run.args
    verb = f"resuming at step {state.step:,} of" if args.resume else "training for"
    processes = f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    threads = ""
    if run.device.type == "cpu":
        adapted = ", adapted to the load" if isinstance(run.threads, ThreadTuner) else ""
        threads = f" ({thread_text(torch.get_num_threads())}{adapted})"
    parameters = sum(p.numel() for p in run.model.parameters())
    print(f"{args.model} model of the next {args.predict}: {parameters:,} parameters, {len(run.train_set):,} "
          f"train windows; {verb} {run.steps:,} steps of {args.batch_size}{processes} on {run.device}{threads}")


def new_epoch(run):
    """A fresh shuffled order of the train windows; the generator's state before it can redraw it."""
    run.state.epoch_state = run.shuffle.get_state()
    run.state.order = torch.randperm(len(run.train_set), device=run.device, generator=run.shuffle)


def next_batch(run):
    """The indices [B] of this process's share of the next effective batch, in the epoch's order."""
    state = run.state
    if state.cursor + run.effective_batch > len(state.order):
        new_epoch(run)
        state.cursor = 0
    indices = state.order[state.cursor:state.cursor + run.effective_batch]
    state.cursor += run.effective_batch
    return distributed.share(indices)


def pushed_forward(run, indices):
    """The inputs [B, 2, N, 5] of windows `indices` [B] as the model itself rolls them out from the window
    k earlier in the same scene, k drawn per window from 0 to --pushforward (no further back than the
    scene's first window)."""
    drawn = torch.randint(run.args.pushforward + 1, (run.effective_batch,), device=run.device, generator=run.noise)
    back = torch.minimum(distributed.share(drawn), indices % run.meta["windows_per_scene"])  # [B]
    return rolled_inputs(run.model, run.train_set, indices, back)


@torch.no_grad()
def rolled_inputs(model, windows, indices, back):
    """The inputs [B, 2, N, 5] of windows `indices` [B] of a split [W, 3, N, 5] after `back` [B] steps of
    `model` (no gradient) from the inputs of windows indices - back. Windows are stored scene by scene in
    time order, so window i - k of a scene is k frames before window i."""
    window = windows[indices - back, :2]  # [B, 2, N, 5]
    for k in range(int(back.max())):
        window = torch.where((k < back)[:, None, None, None], rollouts.step(model, window), window)
    return window


def add_noise(run, inputs):
    """inputs [B, 2, N, 5] with Gaussian noise of std --noise_std on the balls' positions and velocities.
    Drawn for the effective batch, so that it does not depend on the number of processes."""
    noise = torch.randn((run.effective_batch, *inputs.shape[1:]), device=run.device, generator=run.noise)
    noise = distributed.share(noise) * run.args.noise_std
    noise[..., VEL.stop:] = 0  # mass is exact
    return inputs + noise * is_ball(inputs)[..., None]  # blocks stay put, padding empty


def train_step(run, indices):
    """One optimizer step on this process's batch, windows `indices` [B]."""
    args, state = run.args, run.state
    if args.unroll > 1:
        indices = chain_starts(indices, run.meta["windows_per_scene"], args.unroll)
    batch = run.train_set[indices]  # [B, 3, N, 5]
    inputs = pushed_forward(run, indices) if args.pushforward else batch[:, :2]
    inputs = add_noise(run, inputs) if args.noise_std else inputs
    with torch.autocast(run.device.type, torch.bfloat16, enabled=args.amp == "bf16"):
        if args.unroll > 1:
            step_loss = unrolled_loss(run, inputs, indices)
        else:
            step_loss = loss(run.replicated, inputs, batch[:, 2], run.model.dv_scale, run.model.dx_scale)
    run.optimizer.zero_grad(set_to_none=True)
    step_loss.backward()
    if args.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    state.step, state.seen = state.step + 1, state.seen + run.effective_batch
    state.running += step_loss.detach()
    state.first_bad = torch.where((state.first_bad == 0) & ~torch.isfinite(step_loss), state.step, state.first_bad)


def chain_starts(indices, per_scene, length):
    """Windows `indices` [B] moved back just enough that each starts a chain of `length` windows within its
    scene (windows are stored scene by scene, `per_scene` each)."""
    return indices - (indices % per_scene + length - per_scene).clamp_min(0)


def unrolled_loss(run, inputs, indices):
    """The loss averaged over --unroll steps of the model's own chain of predictions from inputs [B, 2, N, 5]
    (of windows `indices` [B]), the gradient flowing through every step: step k is scored against the
    target of window indices + k, k frames later in the same scene."""
    total, window = 0.0, inputs
    for k in range(run.args.unroll):
        pred = run.replicated(window, positions=True)  # [B, N, 4]
        errors, balls = prediction_errors(pred, window, run.train_set[indices + k, 2], run.model.dv_scale,
                                          run.model.dx_scale)
        total = total + errors.sum() / balls.sum()
        window = rollouts.advance(window, pred)
    return total / run.args.unroll


def check_finite(run):
    """Stop the run, keeping the last good checkpoint, once a loss (on any process) or a weight is not finite."""
    bad = distributed.earliest_(run.state.first_bad).item()
    kept = f"the last good checkpoint {run.ckpt_path} is kept" if run.ckpt_path.exists() else "nothing was saved"
    if bad:
        raise NPEError(f"training loss became non-finite at step {bad}; {kept} (try a lower --lr or "
                       f"--max_grad_norm)")
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise NPEError(f"weights became non-finite by step {run.state.step}; {kept} (try a lower --lr or "
                       f"--max_grad_norm)")


def validate(run):
    """The loss on the whole val split (each process its share), a metrics CSV row, the best checkpoint."""
    state, main = run.state, distributed.is_main()
    distributed.average_(state.running)
    run.model.eval()
    val = one_step_loss(run.model, run.val_part, run.model.dv_scale, run.model.dx_scale)
    val = distributed.weighted_mean(val, len(run.val_part))
    run.model.train()
    since = state.step - (state.rows[-1]["step"] if state.rows else 0)
    state.rows.append({"step": state.step, "samples_seen": state.seen,
                       "train_loss": f"{state.running.item() / since:.6g}", "val_loss": f"{val:.6g}",
                       "lr": f"{run.scheduler.get_last_lr()[0]:.6g}", "elapsed_s": f"{time.time() - state.started:.2f}",
                       "model": run.args.model, "predict": run.args.predict})
    state.running.zero_()
    if main:
        write_csv(state.rows, run.csv_path)
    if val < state.best_val:
        state.best_val = val
        if main:
            save_checkpoint(run.best_path, run.model, run.config, run.meta, state.seen, run.saved_args)


def save_run(run):
    """The resumable checkpoint: the weights and all restore() needs to continue exactly (rank 0 writes)."""
    state = run.state
    distributed.average_(state.running)  # the same on every process from here
    if not distributed.is_main():
        return
    train_state = {
        "step": state.step, "seen": state.seen, "cursor": state.cursor, "rows": state.rows,
        "running": state.running.item(), "elapsed_s": time.time() - state.started, "best_val": state.best_val,
        "epoch_shuffle_state": state.epoch_state, "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "noise_generator": run.noise.get_state(),
        "torch_rng": torch.get_rng_state()}
    save_checkpoint(run.ckpt_path, run.model, run.config, run.meta, state.seen, run.saved_args, train_state)
    if not state.rows:  # not validated yet: a best checkpoint or CSV there is of the run this one replaced
        drop_replaced([run.best_path, run.csv_path])


def finish(run, signalled):
    """Say where the results are; a run stopped by a signal exits with 128 + its number."""
    how = "resume with the same command and --resume"
    if signalled:
        raise Interrupted(f"stopped by {signalled.name} at step {run.state.step:,}; checkpoint {run.ckpt_path} "
                          f"is saved; {how}", 128 + signalled.value)
    if run.state.step < run.steps:
        print(f"stopped after step {run.state.step:,} as asked (--stop_after_steps); {how}")
    print(f"checkpoint: {run.ckpt_path} (best val: {run.best_path})\nmetrics: {run.csv_path}")
    return run.ckpt_path
