"""One training loop for both models: the dataset lives on the training device, shuffled batches
are drawn by index, validation runs on the whole val split, and a metrics CSV and a checkpoint are
(re)written atomically at every evaluation."""
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import model_geometry, save_checkpoint
from .cli import NPEError, Parser, fraction, nonnegative_float, positive_float, positive_int
from .config import VEL
from .data import load_meta, load_split
from .files import save_text
from .models import build_model
from .rollout import one_step_mse

CSV_COLUMNS = ["step", "samples_seen", "train_loss", "val_loss", "lr", "elapsed_s"]
MODEL_FLAGS = {"modern": ["msg_dim", "enc_blocks", "dec_blocks", "expansion", "dropout"]}


def train_parser(kind, description, **defaults):
    """The flags of both training scripts; `defaults` are what differ between them."""
    p = Parser(description=description)
    p.add_argument("--dataset_prefix", required=True, help="prefix given to generate_dataset_4ball.py --out_prefix")
    p.add_argument("--name", default=defaults.pop("name"), help="run name: checkpoint is CKPT_DIR/NAME.pt")
    p.add_argument("--ckpt_dir", type=Path, default=Path("checkpoints"), help="folder for the checkpoint")
    p.add_argument("--metrics_csv", type=Path, default=None, help="metrics CSV (default: logs/NAME.csv)")
    p.add_argument("--batch_size", type=positive_int, help="windows per step")
    p.add_argument("--total_samples", type=positive_int, help="windows to train on in all (steps = this / batch)")
    p.add_argument("--eval_every", type=positive_int, help="steps between validations (and checkpoints)")
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
    p.add_argument("--no_pin_memory", action="store_true",
                   help="accepted for older commands; the dataset lives on the training device, nothing is pinned")
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
    """Std of v(t+1) - v(t) over a split [W, 3, N, 5], x and y pooled (keeps the model isotropic)."""
    return (windows[:, 2, :, VEL] - windows[:, 1, :, VEL]).std().item()


def loss_fn(model, frames, target):
    """MSE of the predicted velocity at t+1, in units of the data's velocity-change std.

    frames [B, 2, N, 5], target [B, N, 2]. Predicting "no change" scores about 1.
    """
    return ((model(frames) - target) / model.dv_scale).pow(2).mean()


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


def train(kind, args):
    """Train a `kind` model with the parsed flags; returns the checkpoint path."""
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats slowed RMSprop ~25x mid-run on CPU
    meta = load_meta(args.dataset_prefix)
    train_set = load_split(args.dataset_prefix, "train", meta).to(device)  # [W, 3, N, 5]
    val_set = load_split(args.dataset_prefix, "val", meta).to(device)
    if args.batch_size > len(train_set):
        raise NPEError(f"--batch_size {args.batch_size} is larger than the training split "
                       f"({len(train_set)} windows); use a smaller batch or more scenes")

    config = {**model_geometry(meta), "dv_scale": velocity_change_std(train_set),
              **{k: getattr(args, k) for k in MODEL_FLAGS.get(kind, [])}}
    model = build_model(kind, config).to(device)
    if args.compile:
        model.compile()
    optimizer = make_optimizer(args, model.parameters())
    steps = math.ceil(args.total_samples / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.schedule, int(args.warmup_frac * steps), steps))

    ckpt_path = args.ckpt_dir / f"{args.name}.pt"
    csv_path = args.metrics_csv or Path("logs") / f"{args.name}.csv"
    saved_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    gen = torch.Generator(device=device).manual_seed(args.seed)
    rows, running, seen, start = [], torch.zeros((), device=device), 0, time.time()
    order, cursor = torch.randperm(len(train_set), device=device, generator=gen), 0

    def checkpoint(step):
        rows.append({"step": step, "samples_seen": seen,
                     "train_loss": f"{running.item() / max(1, step - (rows[-1]['step'] if rows else 0)):.6g}",
                     "val_loss": f"{evaluate(model, val_set):.6g}", "lr": f"{scheduler.get_last_lr()[0]:.6g}",
                     "elapsed_s": f"{time.time() - start:.2f}"})
        write_csv(rows, csv_path)
        save_checkpoint(ckpt_path, model, config, meta, seen, saved_args)
        running.zero_()
        return rows[-1]

    print(f"{kind} NPE: {sum(p.numel() for p in model.parameters()):,} parameters, {len(train_set):,} train "
          f"windows, {steps:,} steps of {args.batch_size} on {device}")
    model.train()
    with tqdm(total=steps, unit="step", desc=f"train {kind}") as bar:
        for step in range(1, steps + 1):
            if cursor + args.batch_size > len(order):
                order, cursor = torch.randperm(len(train_set), device=device, generator=gen), 0
            batch = train_set[order[cursor:cursor + args.batch_size]]  # [B, 3, N, 5]
            cursor += args.batch_size
            inputs = batch[:, :2]
            if args.noise_std:
                noise = torch.randn(inputs.shape, device=device, generator=gen) * args.noise_std
                noise[..., VEL.stop:] = 0  # mass is exact
                inputs = inputs + noise
            loss = loss_fn(model, inputs, batch[:, 2, :, VEL])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            running += loss.detach()  # summed on the device: no host sync per step
            seen += len(batch)
            bar.update()
            if step % args.eval_every == 0 or step == steps:
                row = checkpoint(step)
                bar.set_postfix(train=row["train_loss"], val=row["val_loss"],
                                samples_s=f"{seen / (time.time() - start):,.0f}")
    print(f"checkpoint: {ckpt_path}\nmetrics: {csv_path}")
    return ckpt_path
