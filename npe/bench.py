"""How fast this code is on this machine: each measurement side by side with a baseline taken in the
same run, so that the ratios hold on a busy or shared machine even where absolute times do not.

    python -m npe.bench                # 5 measurements of --seconds (60) and about a minute more
    python -m npe.bench --tiny         # seconds, at tiny sizes: checks that the benchmark runs

1. Training samples/s of npe.train.train with the training scripts' recipes, against a plain loop
   written the common way (a DataLoader over a Dataset of windows, shuffle=True, .to(device) per
   batch) with the same model, loss, optimizer, gradient clipping, batch size and number of steps;
   the modern recipe under bf16 autocast (--amp bf16) against float32; and training steps of a model
   that encodes only the pairs inside the neighbourhood against one that encodes every pair.
2. Utilization: the model's matmul FLOPs per sample (one training step, forward and backward) x
   samples/s, against a large float32 matmul on the same device.
3. Simulation scenes/s with one worker and with every core (50,000 scenes, pool start-up included),
   and the main process's peak memory beyond the simulated scenes.
4. One batched rollout against a loop of one rollout per scene, with the same model.
5. The wall time of the full training budgets, extrapolated from 1.

Prints a table and writes it to OUT_DIR/bench_<device>.csv and .json.
"""
import contextlib
import csv
import io
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from .cli import Parser, positive_float, run_cli
from .config import VEL, World
from .data import generate_dataset, load_split
from .files import ensure_parent, save_text
from .models import build_model
from .rollout import rollout
from .sim import simulate_scenes
from .train import RECIPES, loss_fn, make_optimizer, model_config, pick_device, train, train_parser

EXTRAPOLATED_SCENES = 50_000
MB = 2**20


@dataclass(frozen=True)
class Sizes:
    seconds: float  # default length of each time-boxed measurement
    dataset_scenes: int  # training data; its 15% val split is what npe.train's final validation runs on
    max_batch: int  # caps the recipes' batch sizes
    sim_scenes_per_core: int  # one worker simulates this x cores; simulate_scenes hands out chunks of sim.CHUNK
    sim_scenes: int  # all cores simulate this many (or as many as one worker, if more)
    rollout_scenes: int
    rollout_steps: int
    matmul: dict  # device type -> n of the n x n matmul that measures the peak


FULL = Sizes(60.0, 100, 2048, 1000, EXTRAPOLATED_SCENES, 200, 50, {"cpu": 2048, "cuda": 8192})
TINY = Sizes(0.5, 24, 256, 250, 1000, 8, 5, {"cpu": 256, "cuda": 1024})


def log(message):
    print(message, file=sys.stderr, flush=True)


def clock(device):
    """Seconds, once the device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def quiet():
    """Hide what npe's functions print (progress bars, paths) so that the table stays readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def recipe(kind, prefix, out, device, batch_size, steps, *extra):
    """A training script's flags (and `extra` ones), parsed, for `steps` steps on the bench's data,
    validating and saving only at the end."""
    flags = ["--dataset_prefix", prefix, "--ckpt_dir", out, "--metrics_csv", out / f"{kind}.csv",
             "--device", device.type, "--batch_size", batch_size, "--total_samples", steps * batch_size,
             "--eval_every", steps + 1, "--save_every", steps + 1, *extra]
    return train_parser(kind, "bench").parse_args(list(map(str, flags)))


def fresh_model(kind, args, meta, windows, device):
    """A new model with the config npe.train.train builds from the same flags and training windows."""
    return build_model(kind, model_config(kind, args, meta, windows)).to(device)


class WindowDataset(Dataset):
    """Training windows [W, 3, N, 5] the common way: one (frames, target) pair per item."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return self.windows[i, :2], self.windows[i, 2, :, VEL]


def training_step(model, optimizer, args, frames, target):
    """One step of the recipe in `args`, written the common way: loss, backward, clipping, update."""
    loss = loss_fn(model, frames, target)
    optimizer.zero_grad()
    loss.backward()
    if args.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()


def reference_training(model, args, windows, device, seconds):
    """samples/s and steps of the common training loop, run for `seconds` (the schedule is left out:
    it costs microseconds a step)."""
    optimizer = make_optimizer(args, model.parameters())
    loader = DataLoader(WindowDataset(windows), batch_size=args.batch_size, shuffle=True, drop_last=True)
    model.train()
    steps, start = 0, clock(device)
    while time.perf_counter() - start < seconds:  # no sync a step: a copy from pageable memory waits anyway
        for frames, target in loader:
            training_step(model, optimizer, args, frames.to(device), target.to(device))
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    return steps * args.batch_size / (clock(device) - start), steps


def pair_speedup(model, args, windows, device, seconds):
    """samples/s of training steps (batches drawn by index) with only the kept pairs encoded, and with
    every pair encoded (models.NPEBase.neighbourhood_sum), `seconds` each."""
    optimizer = make_optimizer(args, model.parameters())
    windows = windows.to(device)
    speeds = []
    for dense in (False, True):
        model.dense_pairs = dense
        steps, start = 0, clock(device)
        while clock(device) - start < seconds:
            batch = windows[torch.randint(len(windows), (args.batch_size,), device=device)]
            training_step(model, optimizer, args, batch[:, :2], batch[:, 2, :, VEL])
            steps += 1
        speeds.append(steps * args.batch_size / (clock(device) - start))
    model.dense_pairs = None
    return speeds


def our_training(kind, args):
    """samples/s of npe.train.train, by its own clock (elapsed_s in its metrics CSV)."""
    with quiet():
        train(kind, args)
    with open(args.metrics_csv, newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return int(last["samples_seen"]) / float(last["elapsed_s"])


def flops_per_sample(model, windows, batch_size, device):
    """Matmul FLOPs of one training step (forward and backward) divided by the batch size."""
    batch = windows[:batch_size].to(device)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, batch[:, :2], batch[:, 2, :, VEL]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def measure_training(kind, prefix, meta, windows, device, sizes, seconds, out):
    batch_size = min(RECIPES[kind]["batch_size"], sizes.max_batch)
    args = recipe(kind, prefix, out, device, batch_size, steps=1)
    torch.manual_seed(args.seed)
    model = fresh_model(kind, args, meta, windows, device)
    flops = flops_per_sample(model, windows, batch_size, device)
    log(f"training {kind} at batch {batch_size}: DataLoader loop for {seconds:g} s")
    reference, steps = reference_training(model, args, windows, device, seconds)
    log(f"training {kind} at batch {batch_size}: npe.train for the same {steps} steps")
    ours = our_training(kind, recipe(kind, prefix, out, device, batch_size, steps))
    log(f"training {kind} at batch {batch_size}: kept pairs, then every pair, {seconds / 4:g} s each")
    pairs = pair_speedup(fresh_model(kind, args, meta, windows, device), args, windows, device, seconds / 4)
    result = {"batch_size": batch_size, "ours": ours, "reference": reference, "flops": flops, "model": model,
              "pairs": pairs}
    if kind == "modern":
        log(f"training {kind} at batch {batch_size}: npe.train under bf16 autocast, {steps} steps")
        result["bf16"] = our_training(kind, recipe(kind, prefix, out, device, batch_size, steps, "--amp", "bf16"))
    return result


def matmul_peak(device, n, seconds):
    """FLOP/s of an n x n float32 matmul (the models' dtype), repeated for `seconds`."""
    log(f"peak: {n} x {n} matmul for {seconds:g} s")
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # the first call picks kernels and allocates
    count, start = 0, clock(device)
    while clock(device) - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (clock(device) - start)


class ChildrenMemory(threading.Thread):
    """The peak of the resident memory of this process's children together, polled from /proc (Linux;
    elsewhere it stays 0). ru_maxrss cannot tell it: a spawned worker starts as a fork of this process,
    and Linux carries the fork's size, this whole process, across the exec into the worker's peak."""

    def __init__(self, interval=0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, 0, threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, sum(map(resident_bytes, child_pids())))

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def child_pids():
    tasks = Path(f"/proc/{os.getpid()}/task")
    return {pid for f in tasks.glob("*/children") for pid in f.read_text().split()} if tasks.is_dir() else set()


def resident_bytes(pid):
    try:
        found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    except OSError:  # the process has just ended
        return 0
    return int(found.group(1)) * 1024 if found else 0


def simulation(one_worker_scenes, scenes, workers, world=World()):
    """scenes/s with one worker and with `workers` (pool start-up included); peak memory of the main
    process (beyond the output) and of the workers together, with `workers`."""
    log(f"simulating {one_worker_scenes:,} scenes with 1 worker, then {scenes:,} with {workers}")
    start = time.perf_counter()
    simulate_scenes(world, 0, 0, one_worker_scenes, workers=1, progress=False)
    one = time.perf_counter() - start
    tracemalloc.start()  # Python and numpy allocations of this process only, not the workers'
    start = time.perf_counter()
    with ChildrenMemory() as children:
        out = simulate_scenes(world, 0, 0, scenes, workers, progress=False)
    every = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"one_worker_scenes": one_worker_scenes, "scenes": scenes, "workers": workers,
            "one": one_worker_scenes / one, "every": scenes / every,
            "output": out.nbytes, "extra": peak - out.nbytes, "workers_rss": children.peak}


def rollout_speed(model, frames, steps, device):
    """scene-steps/s of one batched rollout of frames [S, 2, N, 5], and of one rollout per scene."""
    model.eval()
    for shape in (frames, frames[:1]):
        rollout(model, shape, 1)  # warm-up: the first call at a shape allocates
    start = clock(device)
    rollout(model, frames, steps)
    batched = clock(device) - start
    start = clock(device)
    for scene in frames.split(1):
        rollout(model, scene, steps)
    looped = clock(device) - start
    return len(frames) * steps / batched, len(frames) * steps / looped


def row(key, measurement, unit, ours, baseline, ratio, goal=None, ratio_unit="x"):
    """key: the same in every run (the measurement's text names this run's sizes). ratio: how many times
    better ours is than the baseline, or (ratio_unit %) the fraction of a peak."""
    return {"key": key, "measurement": measurement, "unit": unit, "ours": ours, "baseline": baseline,
            "ratio": ratio, "ratio_unit": ratio_unit, "goal": goal,
            "meets_goal": None if goal is None else ratio >= goal}


def measure(device, sizes, seconds):
    """Every measurement, in one run."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as npe.train does, process-wide: set here, both loops run alike
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "data"
        with quiet():
            meta = generate_dataset(prefix, sizes.dataset_scenes, seed=0, workers=1)
        windows = load_split(prefix, "train", meta)  # [W, 3, N, 5]
        training = {kind: measure_training(kind, prefix, meta, windows, device, sizes, seconds, Path(tmp))
                    for kind in RECIPES}
    n = sizes.matmul[device.type]
    peak = matmul_peak(device, n, seconds)
    cores = os.cpu_count() or 1
    one_worker_scenes = sizes.sim_scenes_per_core * cores
    sim = simulation(one_worker_scenes, max(sizes.sim_scenes, one_worker_scenes), cores)
    frames = windows[:sizes.rollout_scenes, :2].to(device)  # [S, 2, N, 5]
    size = f"{len(frames)} scenes x {sizes.rollout_steps} steps"
    log(f"rollouts of {size}: batched, then one scene at a time")
    rollouts = {kind: rollout_speed(t["model"], frames, sizes.rollout_steps, device)
                for kind, t in training.items()}
    return {"training": training, "val_windows": meta["windows"]["val"], "seconds": seconds, "matmul": n,
            "peak": peak, "simulation": sim, "rollout": rollouts, "rollout_size": size}


def table_rows(m, device):
    """The measurements as rows, in the issue's order: training, utilization, simulation, rollouts, budgets."""
    cpu = device.type == "cpu"
    training, sim, vs_loader = m["training"], m["simulation"], "npe.train vs DataLoader loop"
    rows = [row(f"train_{kind}", f"train {kind} b{t['batch_size']}: {vs_loader}", "samples/s", t["ours"],
                t["reference"], t["ours"] / t["reference"], goal=3.0 if cpu and kind == "classic" else None)
            for kind, t in training.items()]
    rows += [row(f"pairs_{kind}", f"train {kind} b{t['batch_size']} steps: neighbourhood pairs only vs every pair",
                 "samples/s", *t["pairs"], t["pairs"][0] / t["pairs"][1]) for kind, t in training.items()]
    rows += [row(f"train_{kind}_bf16", f"train {kind} b{t['batch_size']}: npe.train, bf16 autocast vs float32",
                 "samples/s", t["bf16"], t["ours"], t["bf16"] / t["ours"]) for kind, t in training.items() if "bf16" in t]
    for kind, t in training.items():
        achieved, peak = t["flops"] * t["ours"] / 1e9, m["peak"] / 1e9
        rows.append(row(f"utilization_{kind}", f"utilization {kind} b{t['batch_size']}: npe.train vs "
                        f"{m['matmul']}x{m['matmul']} matmul", "GFLOP/s", achieved, peak, achieved / peak,
                        goal=0.30 if cpu and kind == "modern" else None, ratio_unit="%"))
    speedup, workers = sim["every"] / sim["one"], sim["workers"]
    rows += [
        row("simulate_speed", f"simulate {sim['scenes']:,} scenes with {workers} workers vs "
            f"{sim['one_worker_scenes']:,} with 1", "scenes/s", sim["every"], sim["one"], speedup,
            goal=0.8 * workers),
        row("simulate_time", f"simulate {EXTRAPOLATED_SCENES:,} scenes, from scenes/s: {workers} workers vs 1", "s",
            EXTRAPOLATED_SCENES / sim["every"], EXTRAPOLATED_SCENES / sim["one"], speedup),
        row("simulate_memory", f"simulate {sim['scenes']:,} scenes with {workers} workers: peak memory beyond "
            f"the output vs the output", "MB", sim["extra"] / MB, sim["output"] / MB, sim["extra"] / sim["output"]),
    ]
    rows += [row(f"rollout_{kind}", f"rollout {kind} {m['rollout_size']}: batched vs per-scene loop",
                 "scene-steps/s", batched, looped, batched / looped, goal=20.0)
             for kind, (batched, looped) in m["rollout"].items()]
    for kind, t in training.items():
        total = RECIPES[kind]["total_samples"]
        rows.append(row(f"budget_{kind}", f"full budget {kind} {total / 1e6:g}M samples b{t['batch_size']}: "
                        f"{vs_loader}", "h", total / t["ours"] / 3600, total / t["reference"] / 3600,
                        t["ours"] / t["reference"]))
    return rows


def table_notes(m):
    sim = m["simulation"]
    workers = (f"the simulation workers together peaked at {sim['workers_rss'] / MB:.0f} MB resident (polled "
               f"from /proc)" if sim["workers_rss"]
               else "no simulation worker process was seen (one core, or no /proc to read)")
    return [
        "model FLOPs: matmuls of one training step (forward and backward), counted by FlopCounterMode: "
        + ", ".join(f"{kind} {t['flops'] / 1e6:.3g} MFLOP/sample" for kind, t in m["training"].items())
        + "; elementwise work (activations, LayerNorm, optimizer) is not counted",
        f"npe.train is timed by its own clock, which includes one final validation ({m['val_windows']} windows); "
        f"the DataLoader loop runs {m['seconds']:g} s, npe.train the same number of steps",
        f"memory beyond the output: the peak of this process, traced by tracemalloc; {workers}",
        "ratio: how many times better ours is than the baseline (for times: baseline / ours); "
        "utilization: the fraction of the matmul peak. Goals apply to the ratio.",
    ]


def environment(device):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")] if cpuinfo.is_file() else []
        name = models[0] if models else platform.processor() or platform.machine()
    return {"device": device.type, "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cores": os.cpu_count(), "python": platform.python_version()}


def number(x):
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def ratio_text(x, unit):
    return f"{100 * x:.1f}%" if unit == "%" else f"{x:.2f}x"


def table(rows):
    """The rows as an aligned text table."""
    head = ["measurement", "ours", "baseline", "ratio", "goal"]
    cells = [[r["measurement"], f"{number(r['ours'])} {r['unit']}", f"{number(r['baseline'])} {r['unit']}",
              ratio_text(r["ratio"], r["ratio_unit"]),
              "" if r["goal"] is None else f">= {ratio_text(r['goal'], r['ratio_unit'])}: "
                                           f"{'met' if r['meets_goal'] else 'NOT met'}"] for r in rows]
    widths = [max(len(line[i]) for line in [head, *cells]) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *cells]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def to_csv(rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def main():
    p = Parser(prog="python -m npe.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help="length of each time-boxed measurement (default: 60, or 0.5 with --tiny)")
    p.add_argument("--out_dir", type=Path, default=Path("bench"), help="writes bench_<device>.csv and .json here")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, a few seconds: checks that the benchmark runs")
    args = p.parse_args()
    sizes = TINY if args.tiny else FULL
    device = pick_device(args.device)
    seconds = args.seconds or sizes.seconds
    env = environment(device)
    csv_path = ensure_parent(args.out_dir / f"bench_{device.type}.csv")  # a bad --out_dir fails now, not later
    json_path = csv_path.with_suffix(".json")
    measured = measure(device, sizes, seconds)
    rows, notes = table_rows(measured, device), table_notes(measured)
    print(f"{env['device_name']} ({env['device']}), torch {env['torch']}, {env['threads']} threads, "
          f"{env['cores']} cores, python {env['python']}{', tiny sizes' if args.tiny else ''}")
    print(table(rows))
    print("\n".join(f"- {note}" for note in notes))
    save_text(to_csv(rows), csv_path)
    save_text(json.dumps({"environment": env, "tiny": args.tiny, "seconds": seconds, "rows": rows,
                          "notes": notes}, indent=2) + "\n", json_path)
    print(f"wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    run_cli(main)
