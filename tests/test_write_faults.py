"""Faults at the edges of a run: a write that fails (a full disk, simulated by a failing writer, so that the
tests hold as root), temporary files a killed run left, inputs that are not regular files, flag values outside
what the code can use, and SIGTERM to a generation with worker processes."""
import errno
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

import npe.files
import npe.render
from conftest import cli, dead_pid, finish, generation_under_way, group_members, is_one_error_line, messages
from npe.cli import FLOAT32_MAX, FLOAT32_TINY, MAX_SCENES, SEED_MAX, NPEError, ball_mass, random_seed, scene_count
from npe.config import World, state_scale
from npe.files import load_torch, save_text, save_torch
from npe.render import render_rollouts

DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# What torch.save raised on a full disk: a RuntimeError, not an OSError.
TORCH_DISK_FULL = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                               "PytorchStreamWriter failed writing file data/0: file write failed")


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def assert_failed_write_kept(err, path, before):
    """One line naming the file, the previous file byte-identical, no temporary file beside it."""
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(path) in message, message
    assert path.read_bytes() == before
    assert leftovers(path.parent) == []


# 1. A write that fails never replaces the previous file ---------------------------------------------------

def torch_save_fails_midway(obj, f):
    f.write(b"PK\x03\x04 half an archive")
    raise TORCH_DISK_FULL


def test_torch_save_failing_on_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_torch({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(npe.files.torch, "save", torch_save_fails_midway)
    with pytest.raises(NPEError) as err:
        save_torch({"w": torch.zeros(3)}, path)
    assert_failed_write_kept(err, path, before)


def test_text_write_failing_on_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    save_text("step,loss\n1,0.5\n", path)
    before = path.read_bytes()

    def write_text(self, text):
        with open(self, "w") as f:
            f.write(text[:3])
        raise DISK_FULL
    monkeypatch.setattr(npe.files.Path, "write_text", write_text)
    with pytest.raises(NPEError, match="No space left on device") as err:
        save_text("step,loss\n1,0.4\n", path)
    assert_failed_write_kept(err, path, before)


def test_fsync_failing_with_an_io_error_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_torch({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(npe.files.os, "fsync", fsync)
    with pytest.raises(NPEError) as err:
        save_torch({"w": torch.zeros(3)}, path)
    assert_failed_write_kept(err, path, before)


def small_rollout(frames=4):
    """panels and meta for a short video of two balls."""
    world = World()
    states = torch.zeros(frames, 2, 5)  # [T, N, 5], normalized
    states[:, :, 0] = torch.tensor([0.25, 0.75]) * world.width / state_scale()[0]
    states[:, :, 1] = 0.5 * world.height / state_scale()[1]
    states[:, :, 4] = 1.0
    return {"truth": states}, {"state_scale": state_scale(), "world": world.to_dict()}


class SilentlyFailingWriter:
    """imageio's ffmpeg writer whose ffmpeg stops writing after the first frame (a full disk) and which, like
    imageio, raises nothing: the file holds one frame, or with `garbage` the first bytes of nothing."""

    def __init__(self, real, path, garbage):
        self.real, self.path, self.garbage, self.frames = real, path, garbage, 0

    def __enter__(self):
        return self

    def append_data(self, image):
        if self.frames == 0:
            self.real.append_data(image)
        self.frames += 1

    def __exit__(self, *exc):
        self.real.close()
        if self.garbage:
            self.path.write_bytes(self.path.read_bytes()[:100])


@pytest.mark.parametrize("garbage", [False, True], ids=["frames missing", "file cut short"])
def test_video_that_ffmpeg_failed_to_write_is_one_line_and_keeps_the_previous_video(garbage, tmp_path,
                                                                                   monkeypatch):
    panels, meta = small_rollout()
    path = tmp_path / "rollout.mp4"
    render_rollouts(panels, meta, path)
    before = path.read_bytes()
    real_get_writer = npe.render.imageio.get_writer
    monkeypatch.setattr(npe.render.imageio, "get_writer",
                        lambda tmp, **kw: SilentlyFailingWriter(real_get_writer(tmp, **kw), tmp, garbage))
    with pytest.raises(NPEError) as err:
        render_rollouts(panels, meta, path)
    assert_failed_write_kept(err, path, before)


def test_video_written_in_full_passes_the_read_back_check(tmp_path):
    panels, meta = small_rollout(frames=5)
    render_rollouts(panels, meta, tmp_path / "ok.mp4")
    npe.render.check_video(tmp_path / "ok.mp4", 5)


# 2. Temporary files that a killed run left ---------------------------------------------------------------

def test_writing_a_file_removes_its_temporary_files_left_by_dead_processes(tmp_path):
    stale = [tmp_path / f".ckpt.tmp{dead_pid()}.pt", tmp_path / ".ckpt.tmp99999999999.pt"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    save_torch({"w": torch.ones(1)}, tmp_path / "ckpt.pt")
    assert leftovers(tmp_path) == []


def test_writing_a_file_keeps_temporary_files_of_live_processes_and_of_other_files(tmp_path):
    kept = [tmp_path / f".ckpt.tmp{os.getppid()}.pt", tmp_path / f".best.tmp{dead_pid()}.pt",
            tmp_path / f".ckpt.tmp{dead_pid()}.csv"]
    for path in kept:
        path.write_bytes(b"")
    save_torch({"w": torch.ones(1)}, tmp_path / "ckpt.pt")
    assert leftovers(tmp_path) == sorted(p.name for p in kept)


# 3. Inputs that are not regular files ------------------------------------------------------------------

def finishes(fn, timeout=10):
    """(returned, raised) of fn() in a thread; fails the test when fn still runs after `timeout` s."""
    out = {}

    def target():
        try:
            out["returned"] = fn()
        except BaseException as err:  # noqa: B036 - handed to the test
            out["raised"] = err
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still reading after {timeout} s"
    return out.get("returned"), out.get("raised")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_checkpoint_that_is_not_a_regular_file_is_refused_at_once_naming_it(kind, tmp_path):
    path = tmp_path / "ckpt.pt"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    _, raised = finishes(lambda: load_torch(path, "checkpoint", "train one"))
    assert isinstance(raised, NPEError) and "not a regular file" in str(raised) and str(path) in str(raised), raised


# 4. Every value the parser accepts works -------------------------------------------------------------------

@pytest.mark.parametrize("script, flag, value", [
    ("generate_dataset_4ball.py", "--masses", "1e-46"),  # float32 0: a static block
    ("generate_dataset_4ball.py", "--masses", "1,1e39"),  # float32 inf
    ("generate_dataset_4ball.py", "--masses", "1e-40"),  # a float32 subnormal
    ("evaluate_generalization.py", "--seed", str(2**64)),  # more than torch.manual_seed takes
    ("infer_mass.py", "--seed", "-1"),
    ("evaluate_generalization.py", "--num_scenes", "1e15"),  # memory without bound
    ("infer_mass.py", "--num_scenes", str(MAX_SCENES + 1)),
])
def test_flag_value_the_code_cannot_use_is_refused_by_the_parser_in_one_line(script, flag, value, tmp_path):
    status, lines = cli(script, "--ckpts", tmp_path / "none.pt", flag, value, "--out_png", tmp_path / "x.png")
    assert status == 2 and is_one_error_line(lines) and flag in lines[0] and value.split(",")[-1] in lines[0], lines


@pytest.mark.parametrize("parse, edges", [(ball_mass, [FLOAT32_TINY, 1.0, FLOAT32_MAX]),
                                          (random_seed, [0, SEED_MAX]),
                                          (scene_count, [1, MAX_SCENES])],
                         ids=["mass", "seed", "num_scenes"])
def test_flag_range_edges_are_accepted(parse, edges):
    assert [parse(repr(v)) for v in edges] == edges


def test_every_mass_the_parser_accepts_is_stored_as_a_positive_finite_float32():
    assert torch.tensor([FLOAT32_TINY, FLOAT32_MAX], dtype=torch.float32).tolist() == [FLOAT32_TINY, FLOAT32_MAX]


def test_extreme_accepted_masses_simulate_to_finite_positive_masses():
    from npe.sim import simulate_scene
    scene = simulate_scene(World(masses=(FLOAT32_TINY, FLOAT32_MAX)), 0, 0, num_frames=5)
    balls = scene[..., :4, :]
    assert (balls[..., 4] > 0).all() and torch.isfinite(torch.as_tensor(balls)).all()


# 5. SIGTERM to a generation with worker processes --------------------------------------------------------

def generation_ended(proc, seen, after):
    """The messages of a generation_under_way once it has ended; it must within 20 s (healthy: 1 s)."""
    stderr, hung = finish(proc, timeout=20, kill=lambda p: os.killpg(p.pid, signal.SIGKILL))
    assert not hung, f"still running 20 s after {after}"
    return messages(seen + stderr)


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["kill PID", "kill the process group"])
def test_sigterm_to_a_two_worker_generation_exits_143_with_one_line_and_no_traceback(to_group, tmp_path):
    proc, seen = generation_under_way(tmp_path / "balls", 2)
    (os.killpg if to_group else os.kill)(proc.pid, signal.SIGTERM)
    lines = generation_ended(proc, seen, "SIGTERM")
    assert proc.returncode == 143 and is_one_error_line(lines) and "terminated" in lines[0], "\n".join(lines[:40])
    assert not [p for p in tmp_path.iterdir()]


@pytest.mark.slow
def test_a_worker_killed_mid_generation_ends_it_in_one_line_instead_of_waiting_for_it_forever(tmp_path):
    # As the OOM killer would. multiprocessing.Pool started a new worker and waited forever for the lost job.
    proc, seen = generation_under_way(tmp_path / "balls", 2)
    workers = [pid for pid in group_members(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(workers[0], signal.SIGKILL)  # not the resource tracker, the group's other member
    lines = generation_ended(proc, seen, "a worker was killed")
    assert proc.returncode == 2 and is_one_error_line(lines) and "worker process ended" in lines[0], "\n".join(lines)
    assert not [p for p in tmp_path.iterdir()]


def test_an_error_in_a_worker_process_reaches_the_caller_as_itself():
    from npe.sim import CHUNK, simulate_scenes
    with pytest.raises(NPEError, match="cannot place 30 non-overlapping balls"):  # a job for each worker
        simulate_scenes(World(num_balls=(30,)), seed=0, start=0, stop=2 * CHUNK, workers=2, progress=False)
