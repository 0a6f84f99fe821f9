"""How fast this code is on this machine: each measurement beside a baseline taken in the same run, so
that the ratios hold on a busy or shared machine even where absolute times do not.

    python -m npe.bench                # about 9.5 x --seconds (60) and a minute more
    python -m npe.bench --tiny         # seconds, at tiny sizes: checks that the benchmark runs

npe.train.train (timed by its own clock, its one final validation included) runs the training scripts'
recipes; its baseline is a loop written the common way (a DataLoader over a Dataset of windows,
shuffled, .to(device) per batch) with the same model, loss, optimizer, clipping, batch size and steps.
Training on a machine where another job starts mid-run is timed from that job's start: npe.train's
own choice of threads against one thread, and against a count fixed at every core (the old policy).
The ratio is ours / baseline (for times: baseline / ours; for utilization: the fraction of the peak).
Prints a markdown table and writes it to OUT_DIR/bench_<device>.csv and .json.
"""
import contextlib
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from .cli import Interrupted, Parser, positive_float, run_cli
from .config import World
from .data import generate_dataset, load_split
from .files import ensure_parent, save_text
from .models import build_model, loss
from .rollouts import rollout
from .sim import simulate_scenes
from .train import RECIPES, make_optimizer, new_config, pick_device, train, train_parser

EXTRAPOLATED_SCENES = 50_000
# seconds: each time-boxed measurement's default; scenes: the training data; max_batch caps the recipes';
# one worker simulates sim_per_core x cores scenes, every core max(sim_scenes, that); rollout: scenes,
# steps; matmul: n of the n x n float32 matmul (the models' dtype) that measures the peak.
# busy: the batch of the quickstart's training timed beside another job, and the least seconds of each such run.
FULL = dict(seconds=60.0, scenes=100, max_batch=2048, sim_per_core=1000, sim_scenes=EXTRAPOLATED_SCENES,
            rollout=(200, 50), matmul={"cpu": 2048, "cuda": 8192}, busy=(1024, 10.0))
TINY = dict(seconds=0.5, scenes=24, max_batch=256, sim_per_core=250, sim_scenes=1000, rollout=(8, 5),
            matmul={"cpu": 256, "cuda": 1024}, busy=(256, 2.0))
# The other job: a process that keeps one core busy, as another user's single-threaded training does.
COMPETITOR = [sys.executable, "-c", "while True: pass"]
# The table: key, measurement, unit, and the names of ours and of the baseline among the measured values;
# a key with {kind} makes a row for each model that has both.
ROWS = [
    ("train_{kind}", "train {kind} b{batch}: npe.train vs DataLoader loop", "samples/s", "ours", "loader"),
    ("pairs_{kind}", "train {kind} b{batch} steps: kept pairs only vs every pair", "samples/s", "kept", "every"),
    ("train_{kind}_bf16", "train {kind} b{batch}: npe.train, bf16 autocast vs float32", "samples/s", "bf16", "ours"),
    ("utilization_{kind}", "utilization {kind} b{batch}: npe.train vs {n}x{n} matmul", "GFLOP/s", "gflops", "peak"),
    ("simulate_speed", "simulate {scenes:,} scenes with {workers} workers vs {one_scenes:,} with 1", "scenes/s",
     "all", "one"),
    ("simulate_time", "simulate {extrapolated:,} scenes, from scenes/s: {workers} workers vs 1", "s", "all_s", "one_s"),
    ("simulate_memory", "simulate {scenes:,} scenes: peak memory beyond the output vs output", "MB", "extra", "output"),
    ("rollout_{kind}", "rollout {kind} {rollout}: batched vs per-scene loop", "scene-steps/s", "batched", "looped"),
    ("budget_{kind}", "budget {kind} {total:g}M samples b{batch}: npe.train vs DataLoader loop", "h",
     "hours", "loader_hours"),
    ("busy_auto", "train classic b{busy_batch}, another job from {busy_from:.3g} s of {busy_s:.3g}: npe.train's "
     "threads vs 1 thread", "samples/s", "busy_auto", "busy_one"),
    ("busy_fixed", "train classic b{busy_batch}, the same other job: {cores} threads fixed vs 1 thread", "samples/s",
     "busy_fixed", "busy_one"),
]


def rate(device, seconds, fn):
    """Calls/s and calls of fn(), called for `seconds` and at least once, timed to the end of the device
    work they queue (no sync a call: the queue is waited for once, at the end)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return calls / (time.perf_counter() - start), calls


@contextlib.contextmanager
def quiet():
    """Hide what npe's functions print (progress bars, paths) so that the table stays readable."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def our_training(args):
    """samples/s of npe.train.train, by its own clock (the last row of its metrics CSV)."""
    with quiet():
        train(args)
    last = pd.read_csv(args.metrics_csv).iloc[-1]
    return last["samples_seen"] / last["elapsed_s"]


def plain_step(model, optimizer, args, batches, device):
    """One training step on the next (frames, target) of `batches`, written the common way: loss,
    backward, clipping, update (no schedule: it costs microseconds)."""
    frames, target = next(batches)
    step_loss = loss(model, frames.to(device), target.to(device), model.dv_scale)
    optimizer.zero_grad()
    step_loss.backward()
    if args.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()


def random_batches(windows, batch_size):
    """(frames, target) batches drawn by index from windows [W, 3, N, 5], on their device, as npe.train does."""
    while True:
        batch = windows[torch.randint(len(windows), (batch_size,), device=windows.device)]
        yield batch[:, :2], batch[:, 2]


def measure_model(kind, prefix, meta, windows, device, sizes, seconds):
    """One recipe's values: training samples/s (four ways), FLOPs per sample, rollout speeds, budget hours."""
    batch = min(RECIPES[kind]["batch_size"], sizes["max_batch"])
    flags = ["--dataset_prefix", str(prefix), "--ckpt_dir", str(prefix.parent), "--metrics_csv",
             str(prefix.parent / f"{kind}.csv"), "--device", device.type, "--batch_size", str(batch),
             "--eval_every", str(10**9), "--save_every", str(10**9),  # validate and save at the end only
             "--threads", str(torch.get_num_threads())]  # as many as the loops here, not npe.train's choice
    parse = train_parser(kind, "bench").parse_args
    args = parse(flags)
    torch.manual_seed(args.seed)
    model = build_model(args.model, new_config(args, meta, windows)).to(device)
    optimizer, on_device = make_optimizer(args, model.parameters()), windows.to(device)
    with FlopCounterMode(display=False) as flops:  # matmuls of one training step, forward and backward
        loss(model, on_device[:batch, :2], on_device[:batch, 2], model.dv_scale).backward()
    print(f"training {kind} at batch {batch}: DataLoader loop for {seconds:g} s, npe.train for as many steps, "
          f"then kept pairs and every pair, {seconds / 4:g} s each", file=sys.stderr)
    loader = DataLoader(TensorDataset(windows[:, :2], windows[:, 2]), batch, shuffle=True, drop_last=True)
    epochs = itertools.chain.from_iterable(itertools.repeat(loader))
    model.train()
    loader_speed, steps = rate(device, seconds, lambda: plain_step(model, optimizer, args, epochs, device))
    m = {"kind": kind, "batch": batch, "flops": flops.get_total_flops() / batch, "loader": loader_speed * batch,
         "ours": our_training(parse(flags + ["--total_samples", str(steps * batch)]))}
    if kind == "modern":
        m["bf16"] = our_training(parse(flags + ["--total_samples", str(steps * batch), "--amp", "bf16"]))
    batches = random_batches(on_device, batch)
    for name, dense in (("kept", False), ("every", True)):
        model.dense_pairs = dense
        m[name] = batch * rate(device, seconds / 4, lambda: plain_step(model, optimizer, args, batches, device))[0]
    model.dense_pairs = None
    model.eval()
    frames, length = on_device[:sizes["rollout"][0], :2], sizes["rollout"][1]  # [S, 2, N, 5]
    m["rollout"] = f"{len(frames)} scenes x {length} steps"
    print(f"rollouts {kind}, {m['rollout']}: batched, then one scene at a time", file=sys.stderr)
    for shape in (frames, frames[:1]):
        rollout(model, shape, 1)  # warm-up: the first call at a shape allocates
    scene_steps = len(frames) * length
    m["batched"] = scene_steps * rate(device, 0, lambda: rollout(model, frames, length))[0]
    m["looped"] = scene_steps * rate(device, 0, lambda: [rollout(model, s, length) for s in frames.split(1)])[0]
    total = RECIPES[kind]["total_samples"]
    return {**m, "gflops": m["flops"] * m["ours"] / 1e9, "total": total / 1e6, "hours": total / m["ours"] / 3600,
            "loader_hours": total / m["loader"] / 3600}


def busy_training(prefix, batch, seconds, threads):
    """samples/s of classic training at `batch` (--threads `threads`, 0: npe.train's choice) from the moment
    a COMPETITOR starts, a third of the way into `seconds` of training, to its end (a SIGTERM: training
    saves and stops), from the rows of its metrics CSV; validation every 5 steps."""
    csv_path = prefix.parent / f"busy_{threads}.csv"
    args = train_parser("classic", "bench").parse_args([
        "--dataset_prefix", str(prefix), "--ckpt_dir", str(prefix.parent), "--name", f"busy_{threads}",
        "--metrics_csv", str(csv_path), "--device", "cpu", "--batch_size", str(batch), "--eval_every", "5",
        "--total_samples", str(10**12), "--threads", str(threads)])
    done, before = threading.Event(), torch.get_num_threads()
    with ThreadPoolExecutor(1) as pool:
        competing = pool.submit(compete, csv_path, seconds, done)
        try:
            with quiet():
                train(args)
        except Interrupted:  # the SIGTERM that ends the run
            pass
        finally:
            done.set()
            torch.set_num_threads(before)  # npe.train set its own
    rows = pd.read_csv(csv_path)
    start = rows.elapsed_s.iloc[0] + competing.result()  # the competitor's start, on the run's clock
    base, last = rows[rows.elapsed_s <= start].iloc[-1], rows.iloc[-1]
    return (last.samples_seen - base.samples_seen) / (last.elapsed_s - base.elapsed_s)


def compete(csv_path, seconds, done):
    """Once training has written its first metrics row: COMPETITOR after a third of `seconds`, then a SIGTERM
    to this process at `seconds`, or later once a row has come since the competitor started (a collapsed run
    may take seconds a step); the competitor ends when `done` is set. Returns when it started, in seconds after
    that first row."""
    while not csv_path.exists():
        if done.wait(0.01):
            raise RuntimeError("training ended before its first validation")
    first = time.monotonic()
    done.wait(seconds / 3)
    competitor = subprocess.Popen(COMPETITOR)
    try:
        started, rows = time.monotonic() - first, len(csv_path.read_text().splitlines())
        done.wait(first + seconds - time.monotonic())
        while not done.is_set() and len(csv_path.read_text().splitlines()) <= rows:
            done.wait(0.05)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # training stops after the step under way
            done.wait()
    finally:
        competitor.kill()
        competitor.wait()
    return started


def children_peak(done, interval=0.05):
    """The peak resident memory of this process's children together, polled from /proc (Linux; elsewhere 0)
    until `done` is set. ru_maxrss cannot tell it: a spawned worker starts as a fork of this process, and
    Linux carries the fork's size, this whole process, across the exec into the worker's peak."""
    peak, children = 0, Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")  # the main thread starts them
    while not done.wait(interval):
        with contextlib.suppress(OSError):  # no /proc, or a worker that has just ended: the next poll counts
            pages = sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in children.read_text().split())
            peak = max(peak, pages * os.sysconf("SC_PAGE_SIZE"))
    return peak


def simulation(sizes, world=World()):
    """scenes/s with one worker and with every core (pool start-up included); with every core, this
    process's peak memory beyond the output (tracemalloc) and the workers' (children_peak), in MB."""
    workers = os.cpu_count() or 1
    one_scenes = sizes["sim_per_core"] * workers
    scenes = max(sizes["sim_scenes"], one_scenes)
    print(f"simulating {one_scenes:,} scenes with 1 worker, then {scenes:,} with {workers}", file=sys.stderr)
    start = time.perf_counter()
    simulate_scenes(world, 0, 0, one_scenes, 1, progress=False)
    one = one_scenes / (time.perf_counter() - start)
    done = threading.Event()
    tracemalloc.start()  # Python and numpy allocations of this process, not the workers'
    with ThreadPoolExecutor(1) as poller:
        workers_rss, start = poller.submit(children_peak, done), time.perf_counter()
        try:
            out = simulate_scenes(world, 0, 0, scenes, workers, progress=False)
            every = scenes / (time.perf_counter() - start)
        finally:
            done.set()
    extra = tracemalloc.get_traced_memory()[1] - out.nbytes
    tracemalloc.stop()
    return {"workers": workers, "scenes": scenes, "one_scenes": one_scenes, "extrapolated": EXTRAPOLATED_SCENES,
            "one": one, "all": every, "one_s": EXTRAPOLATED_SCENES / one, "all_s": EXTRAPOLATED_SCENES / every,
            "extra": extra / 2**20, "output": out.nbytes / 2**20, "workers_mb": workers_rss.result() / 2**20}


def measure(device, sizes, seconds):
    """Every measurement, in one run, as table rows (ROWS filled in) and notes."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as npe.train does, process-wide: set here, both loops run alike
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "data"
        with quiet():
            meta = generate_dataset(prefix, sizes["scenes"], seed=0, workers=1)
        windows = load_split(prefix, "train", meta)  # [W, 3, N, 5]
        models = [measure_model(kind, prefix, meta, windows, device, sizes, seconds) for kind in RECIPES]
        busy = {}
        if device.type == "cpu":
            batch, busy_s = sizes["busy"][0], max(seconds, sizes["busy"][1])
            print(f"training classic at batch {batch} for {busy_s:g} s, another job from {busy_s / 3:g} s: "
                  f"npe.train's threads, 1 thread, {os.cpu_count()} threads", file=sys.stderr)
            busy = {"busy_batch": batch, "busy_s": busy_s, "busy_from": busy_s / 3, "cores": os.cpu_count(),
                    **{f"busy_{name}": busy_training(prefix, batch, busy_s, threads)
                       for name, threads in (("auto", 0), ("one", 1), ("fixed", os.cpu_count()))}}
    n = sizes["matmul"][device.type]
    print(f"peak: {n} x {n} matmul for {seconds:g} s", file=sys.stderr)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    shared = {"n": n, "peak": 2 * n**3 * rate(device, seconds, lambda: a @ b)[0] / 1e9, **simulation(sizes), **busy}
    rows = []
    for key, text, unit, ours, base in ROWS:
        for v in [{**shared, **m} for m in models] if "{kind}" in key else [shared]:
            if ours in v:
                rows.append({"key": key.format(**v), "measurement": text.format(**v), "unit": unit,
                             "ours": v[ours], "baseline": v[base],
                             "ratio": v[base] / v[ours] if unit in ("s", "h") else v[ours] / v[base],
                             "ratio_unit": "%" if unit == "GFLOP/s" else "x"})
    flops = ", ".join(f"{m['kind']} {m['flops'] / 1e6:.3g} MFLOP/sample" for m in models)
    return rows, [f"model FLOPs (matmuls of a training step, forward and backward): {flops}",
                  f"the simulation workers together peaked at {shared['workers_mb']:.0f} MB resident (0: none seen)"]


def main():
    p = Parser(prog="python -m npe.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help="length of each time-boxed measurement (default: 60, or 0.5 with --tiny)")
    p.add_argument("--out_dir", type=Path, default=Path("bench"), help="writes bench_<device>.csv and .json here")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, a few seconds: checks that the benchmark runs")
    args = p.parse_args()
    sizes, device = TINY if args.tiny else FULL, pick_device(args.device)
    seconds = args.seconds or sizes["seconds"]
    csv_path = ensure_parent(args.out_dir / f"bench_{device.type}.csv")  # a bad --out_dir fails now, not later
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpus = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    env = {"device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else (cpus or [platform.machine()])[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cores": os.cpu_count(), "python": platform.python_version()}
    rows, notes = measure(device, sizes, seconds)
    print(f"{env['device_name']} ({env['device']}), torch {env['torch']}, {env['threads']} threads, "
          f"{env['cores']} cores, python {env['python']}{', tiny sizes' if args.tiny else ''}")
    print("| measurement | ours | baseline | ratio |\n|---|---|---|---|")
    for r in rows:
        ours, base = (f"{x:{',.0f' if x >= 100 else '.3g'}}" for x in (r["ours"], r["baseline"]))
        ratio = f"{100 * r['ratio']:.1f}%" if r["ratio_unit"] == "%" else f"{r['ratio']:.2f}x"
        print(f"| {r['measurement']} | {ours} {r['unit']} | {base} | {ratio} |")
    print("\n".join(f"- {note}" for note in notes))
    save_text(pd.DataFrame(rows).to_csv(index=False), csv_path)
    save_text(json.dumps({"environment": env, "tiny": args.tiny, "seconds": seconds, "rows": rows, "notes": notes},
                         indent=2) + "\n", csv_path.with_suffix(".json"))
    print(f"wrote {csv_path} and {csv_path.with_suffix('.json')}")


if __name__ == "__main__":
    run_cli(main)
