"""One training loop for both models: the dataset lives on the training device, shuffled batches
are drawn by index, validation runs on the whole val split, and a metrics CSV and a resumable
checkpoint are (re)written atomically at every evaluation, every --save_every steps and on a stop.
Under torchrun, each process trains on its share of every batch (npe/distributed.py)."""
import math
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed
from .checkpoint import load_checkpoint, model_geometry, save_checkpoint
from .cli import Interrupted, NPEError, Parser, fraction, nonnegative_float, positive_float, positive_int
from .config import MASS, VEL
from .data import load_meta, load_split
from .files import save_text
from .models import build_model
from .rollout import masked_mse, one_step_mse

CSV_COLUMNS = ["step", "samples_seen", "train_loss", "val_loss", "lr", "elapsed_s"]
MODEL_FLAGS = {"modern": ["msg_dim", "enc_blocks", "dec_blocks", "expansion", "dropout"], "lstm": ["slots"]}
# Default run names; the classic script also trains the paper's baselines (--model np / lstm).
NAMES = {"classic": "npe_classic", "modern": "npe_modern", "np": "np_baseline", "lstm": "lstm_baseline"}
BASELINES = ["np", "lstm"]
# The defaults that differ between the two training scripts (npe.bench measures these recipes too).
RECIPES = {
    "classic": dict(batch_size=50, total_samples=60_000_000, eval_every=2000,
                    optimizer="rmsprop", lr=3e-4, weight_decay=0.0, schedule="constant", warmup_frac=0.0,
                    max_grad_norm=0.0, noise_std=0.0),
    "modern": dict(batch_size=2048, total_samples=200_000_000, eval_every=500,
                   optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_frac=0.02,
                   max_grad_norm=1.0, noise_std=0.0),
}
# Flags that shape a run: --resume refuses to continue a run with different ones. The batch is checked
# as the effective batch (--batch_size x processes), so a run may resume on another number of processes.
RESUME_FLAGS = ["model", "slots", "total_samples", "optimizer", "lr", "weight_decay", "schedule", "warmup_frac",
                "max_grad_norm", "noise_std", "seed", *MODEL_FLAGS["modern"]]


def train_parser(kind, description):
    """The flags of both training scripts, with the defaults of `kind`'s recipe."""
    defaults = dict(RECIPES[kind])
    p = Parser(description=description)
    p.add_argument("--dataset_prefix", required=True, help="prefix given to generate_dataset_4ball.py --out_prefix")
    names = f"{NAMES[kind]}" + "".join(f"; {NAMES[b]} with --model {b}" for b in BASELINES if kind == "classic")
    p.add_argument("--name", default=None, help=f"run name: checkpoint is CKPT_DIR/NAME.pt (default: {names})")
    p.add_argument("--ckpt_dir", type=Path, default=Path("checkpoints"), help="folder for the checkpoint")
    p.add_argument("--metrics_csv", type=Path, default=None, help="metrics CSV (default: logs/NAME.csv)")
    p.add_argument("--batch_size", type=positive_int,
                   help="windows per step and process (under torchrun the effective batch is this x processes)")
    p.add_argument("--total_samples", type=positive_int, help="windows to train on in all (steps = this / batch)")
    p.add_argument("--eval_every", type=positive_int, help="steps between validations (each also saves)")
    p.add_argument("--save_every", type=positive_int, default=1000,
                   help="steps between checkpoints (also saved at every validation, on Ctrl-C and at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in CKPT_DIR/NAME.pt (same flags) where it stopped")
    p.add_argument("--stop_after_steps", type=positive_int, default=None,
                   help="save and stop after this many steps in all, for a later --resume (default: run to the end)")
    p.add_argument("--optimizer", choices=["rmsprop", "adamw"], help="optimizer")
    p.add_argument("--lr", type=positive_float, help="peak learning rate")
    p.add_argument("--weight_decay", type=nonnegative_float, help="weight decay")
    p.add_argument("--schedule", choices=["constant", "cosine"], help="learning-rate schedule after warmup")
    p.add_argument("--warmup_frac", type=fraction, help="fraction of steps with a linear warmup")
    p.add_argument("--max_grad_norm", type=nonnegative_float, help="gradient clipping norm (0: off)")
    p.add_argument("--noise_std", type=nonnegative_float,
                   help="std of Gaussian noise added to input positions and velocities (normalized units)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialization and batch order")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile_mode", choices=["default", "reduce-overhead", "max-autotune"], default="default",
                   help="with --compile: torch.compile's mode (reduce-overhead replays CUDA graphs, which cuts "
                        "the launch overhead of these small MLPs on a GPU)")
    p.add_argument("--amp", choices=["off", "bf16"], default="off",
                   help="bf16: run the training forward pass and loss under bfloat16 autocast (validation "
                        "stays float32)")
    p.add_argument("--no_pin_memory", action="store_true",
                   help="accepted for older commands; the dataset lives on the training device, nothing is pinned")
    if kind == "classic":
        p.add_argument("--model", choices=["classic", *BASELINES], default="classic",
                       help="classic: the NPE; np: the paper's no-pairwise baseline; lstm: its LSTM baseline "
                            "(both with this script's recipe)")
        p.add_argument("--slots", type=positive_int, default=10,
                       help="--model lstm only: objects the LSTM takes (scenes are padded to this many)")
    if kind == "modern":
        p.add_argument("--msg_dim", type=positive_int, default=96, help="width of messages and residual stream")
        p.add_argument("--enc_blocks", type=positive_int, default=3, help="residual blocks in the pairwise encoder")
        p.add_argument("--dec_blocks", type=positive_int, default=3, help="residual blocks in the decoder")
        p.add_argument("--expansion", type=positive_int, default=2, help="MLP hidden width = msg_dim x expansion")
        p.add_argument("--dropout", type=fraction, default=0.0, help="dropout inside residual blocks")
    p.set_defaults(**defaults)
    return p


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NPEError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def velocity_change_std(windows):
    """Std of v(t+1) - v(t) of the balls in a split [W, 3, N, 5], x and y pooled (keeps the model isotropic)."""
    moving = windows[:, 1, :, MASS] > 0  # [W, N]
    return (windows[:, 2, :, VEL] - windows[:, 1, :, VEL])[moving].std().item()


def model_config(kind, args, meta, train_set):
    """A new model's config: geometry from the metadata, dv_scale from the train split, the size flags."""
    return {**model_geometry(meta), "dv_scale": velocity_change_std(train_set),
            **{k: getattr(args, k) for k in MODEL_FLAGS.get(kind, [])}}


def loss_fn(model, frames, target):
    """MSE of the balls' predicted velocity at t+1, in units of the data's velocity-change std.

    frames [B, 2, N, 5], target [B, N, 2]. Blocks and padding do not count. Predicting "no change"
    scores about 1.
    """
    return masked_mse(model(frames), target, frames[:, 1, :, MASS] > 0) / model.dv_scale ** 2


def evaluate(model, windows):
    """loss_fn over all windows [W, 3, N, 5], in eval mode."""
    model.eval()
    loss = one_step_mse(model, windows, model.dv_scale)
    model.train()
    return loss


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
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.RMSprop(params, lr=args.lr, weight_decay=args.weight_decay)


def write_csv(rows, path):
    lines = [",".join(CSV_COLUMNS)] + [",".join(str(r[c]) for c in CSV_COLUMNS) for r in rows]
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


def check_resumable(ckpt, args, meta, path):
    """A resumed run must continue the same run: same data, flags that shape training, saved state."""
    if "train_state" not in ckpt:
        raise NPEError(f"{path} has no training state to resume from (a best-val checkpoint?)")
    for key in ("world", "seed", "scenes"):
        if ckpt["meta"].get(key) != meta.get(key):
            raise NPEError(f"{path} was trained on other data ({key}: {ckpt['meta'].get(key)} vs "
                           f"{meta.get(key)} in {args.dataset_prefix}); resume with its --dataset_prefix")
    changed = [f"--{k} was {ckpt['args'].get(k)}, now {getattr(args, k)}" for k in RESUME_FLAGS
               if hasattr(args, k) and ckpt["args"].get(k) != getattr(args, k)]
    saved = ckpt["args"]
    before = saved.get("effective_batch", saved.get("batch_size"))  # runs saved before torchrun support: 1 process
    if before != args.batch_size * distributed.world_size():
        changed.append(f"the effective batch (--batch_size x processes) was {before} "
                       f"({saved.get('batch_size')} x {saved.get('world_size', 1)}), now "
                       f"{args.batch_size} x {distributed.world_size()}")
    if changed:
        raise NPEError(f"--resume continues the run in {path} with its own flags: {'; '.join(changed)}")


def train(kind, args):
    """Train a `kind` model with the parsed flags; returns the checkpoint path.

    Under torchrun every process runs this, on its own device (cuda:LOCAL_RANK) and share of each batch.
    """
    args.name = args.name or NAMES[kind]
    with distributed.process_group(pick_device(args.device)) as device:
        return _train(kind, args, device)


def _train(kind, args, device):
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats slowed RMSprop ~25x mid-run on CPU
    else:
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for float32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    meta = load_meta(args.dataset_prefix)
    train_set = load_split(args.dataset_prefix, "train", meta).to(device)  # [W, 3, N, 5]
    val_set = load_split(args.dataset_prefix, "val", meta).to(device)
    effective_batch = args.batch_size * distributed.world_size()  # windows per step, all processes together
    if effective_batch > len(train_set):
        raise NPEError(f"the effective batch {effective_batch} (--batch_size x processes) is larger than the "
                       f"training split ({len(train_set)} windows); use a smaller batch or more scenes")
    if len(val_set) < distributed.world_size():
        raise NPEError(f"the val split ({len(val_set)} windows) has fewer windows than there are processes")
    val_part = distributed.share(val_set)  # each process validates its own part
    main = distributed.is_main()
    ckpt_path = args.ckpt_dir / f"{args.name}.pt"
    best_path = args.ckpt_dir / f"{args.name}_best.pt"
    csv_path = args.metrics_csv or Path("logs") / f"{args.name}.csv"
    saved_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    saved_args.update(world_size=distributed.world_size(), effective_batch=effective_batch)
    resume = None
    if args.resume:
        if not ckpt_path.is_file():
            raise NPEError(f"nothing to resume: {ckpt_path} not found (check --name and --ckpt_dir)")
        resume = load_checkpoint(ckpt_path, kind)
        check_resumable(resume, args, meta, ckpt_path)

    torch.manual_seed(args.seed)
    config = resume["config"] if resume else model_config(kind, args, meta, train_set)
    model = build_model(kind, config).to(device)
    optimizer = make_optimizer(args, model.parameters())
    steps = math.ceil(args.total_samples / effective_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.schedule, int(args.warmup_frac * steps), steps))
    # Two generators, so that a resumed run can redraw the epoch's batch order from its seed state
    # instead of storing the permutation (16 MB for 50,000 scenes) in every checkpoint.
    shuffle = torch.Generator(device=device).manual_seed(args.seed)
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 1)

    def new_epoch():
        """A fresh shuffled order of the train windows, and the generator state that redraws it."""
        epoch_state = shuffle.get_state()
        return torch.randperm(len(train_set), device=device, generator=shuffle), epoch_state

    if resume:
        state = resume["train_state"]
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        noise_gen.set_state(state["noise_generator"])
        torch.set_rng_state(state["torch_rng"])
        shuffle.set_state(state["epoch_shuffle_state"])
    else:
        state = {"step": 0, "seen": 0, "cursor": 0, "rows": [], "running": 0.0, "elapsed_s": 0.0,
                 "best_val": math.inf}
    distributed.seed_per_rank(args.seed, state["step"])
    order, epoch_state = new_epoch()
    if args.compile:
        model.compile(mode=args.compile_mode)  # in place, so the state dict keys stay clean
    replicated = distributed.replicate(model)  # training steps run through this; all else uses model
    step, seen, cursor, rows = state["step"], state["seen"], state["cursor"], state["rows"]
    running = torch.tensor(state["running"], device=device)  # loss summed on the device: no sync per step
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step with a non-finite loss
    start = time.time() - state["elapsed_s"]

    def save(with_eval):
        distributed.average_(running)
        bad = distributed.earliest_(first_bad).item()
        kept = f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "nothing was saved"
        if bad:
            raise NPEError(f"training loss became non-finite at step {bad}; {kept} (try a lower --lr or "
                           f"--max_grad_norm)")
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise NPEError(f"weights became non-finite by step {step}; {kept} (try a lower --lr or "
                           f"--max_grad_norm)")
        if with_eval:
            since = step - (rows[-1]["step"] if rows else 0)
            val = distributed.weighted_mean(evaluate(model, val_part), len(val_part))
            rows.append({"step": step, "samples_seen": seen, "train_loss": f"{running.item() / since:.6g}",
                         "val_loss": f"{val:.6g}", "lr": f"{scheduler.get_last_lr()[0]:.6g}",
                         "elapsed_s": f"{time.time() - start:.2f}"})
            running.zero_()
            if main:
                write_csv(rows, csv_path)
            if val < state["best_val"]:
                state["best_val"] = val
                if main:
                    save_checkpoint(best_path, model, config, meta, seen, saved_args)
        train_state = {
            "step": step, "seen": seen, "cursor": cursor, "rows": rows, "running": running.item(),
            "elapsed_s": time.time() - start, "best_val": state["best_val"], "epoch_shuffle_state": epoch_state,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "noise_generator": noise_gen.get_state(), "torch_rng": torch.get_rng_state()}
        if main:
            save_checkpoint(ckpt_path, model, config, meta, seen, saved_args, train_state)

    verb = f"resuming at step {step:,} of" if resume else "training for"
    processes = f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    print(f"{kind} model: {sum(p.numel() for p in model.parameters()):,} parameters, {len(train_set):,} train "
          f"windows; {verb} {steps:,} steps of {args.batch_size}{processes} on {device}")
    model.train()
    session_start, first_seen = time.time(), seen
    with StopSignals() as stop, tqdm(total=steps, initial=step, unit="step", desc=f"train {kind}",
                                   disable=not main) as bar:
        while step < steps:
            if cursor + effective_batch > len(order):
                (order, epoch_state), cursor = new_epoch(), 0
            batch = train_set[distributed.share(order[cursor:cursor + effective_batch])]  # [B, 3, N, 5]
            cursor += effective_batch
            inputs = batch[:, :2]
            if args.noise_std:
                # drawn for the effective batch, so that it does not depend on the number of processes
                noise = torch.randn((effective_batch, *inputs.shape[1:]), device=device, generator=noise_gen)
                noise = distributed.share(noise) * args.noise_std
                noise[..., VEL.stop:] = 0  # mass is exact
                inputs = inputs + noise * (inputs[..., MASS:] > 0)  # blocks stay put, padding empty
            with torch.autocast(device.type, torch.bfloat16, enabled=args.amp == "bf16"):
                loss = loss_fn(replicated, inputs, batch[:, 2, :, VEL])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step, seen = step + 1, seen + effective_batch
            running += loss.detach()
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
            bar.update()
            evaluate_now = step % args.eval_every == 0 or step == steps
            stop.agree()
            stopping = bool(stop.received) or step == args.stop_after_steps
            if evaluate_now or stopping or step % args.save_every == 0:
                save(evaluate_now)
                if evaluate_now:
                    rate = (seen - first_seen) / (time.time() - session_start)
                    bar.set_postfix(train=rows[-1]["train_loss"], val=rows[-1]["val_loss"], samples_s=f"{rate:,.0f}")
            if stopping:
                break
    how = "resume with the same command and --resume"
    if stop.received:
        raise Interrupted(f"stopped by {stop.received.name} at step {step:,}; checkpoint {ckpt_path} is "
                          f"saved; {how}", 128 + stop.received.value)
    if step < steps:
        print(f"stopped after step {step:,} as asked (--stop_after_steps); {how}")
    print(f"checkpoint: {ckpt_path} (best val: {best_path})\nmetrics: {csv_path}")
    return ckpt_path
