"""Several processes, one training run: torchrun starts one process (a rank) per GPU or CPU slot, on one
machine or several, and sets RANK, WORLD_SIZE and LOCAL_RANK. Without torchrun (WORLD_SIZE unset or 1)
every function here leaves a single process exactly as it was.

Each rank takes an equal share of every batch; DistributedDataParallel averages the gradients, so all
ranks hold the same weights. Small host-side agreements (the stop signal, the validation loss) go
through a gloo group, which works beside nccl and never waits on the GPU.
"""
import contextlib
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .cli import NPEError

_host_group = None  # the gloo group for host-side values, while a process group is joined


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """Rank 0 writes the checkpoint, the CSV and the progress bar; the others only compute."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device):
    """Join torchrun's process group for the duration (nccl on CUDA, else gloo); yields this rank's device.

    Other ranks' stdout is dropped, since it would repeat rank 0's lines; stderr stays, so an error on
    any rank is seen.
    """
    global _host_group
    if launched_processes() == 1:
        yield device
        return
    cuda = device.type == "cuda"
    if cuda:
        if (local := int(os.environ["LOCAL_RANK"])) >= torch.cuda.device_count():
            raise NPEError(f"LOCAL_RANK={local}, but torch sees {torch.cuda.device_count()} GPUs; start at most "
                           f"that many processes per machine")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    _host_group = dist.new_group(backend="gloo")
    try:
        with open(os.devnull, "w") as devnull, \
                (contextlib.redirect_stdout(devnull) if rank() else contextlib.nullcontext()):
            yield device
    finally:
        _host_group = None
        dist.destroy_process_group()


def launched_processes():
    """WORLD_SIZE, the number of processes torchrun started (1 without it), once torchrun's environment is
    checked: a variable set by hand or left over from another job is one NPEError, not a traceback or a wait
    for processes that never come."""
    def number(key, low, high):
        text = os.environ.get(key, "")
        if not (text.strip().isdigit() and low <= int(text) <= high):
            raise NPEError(f"{key}={text!r} in the environment is not an integer from {low} to {high}; start several "
                           f"processes with torchrun (docs/distributed.md), or unset WORLD_SIZE for one")
        return int(text)
    if "WORLD_SIZE" not in os.environ:
        return 1
    size = number("WORLD_SIZE", 1, 2**31 - 1)
    if size > 1:
        if missing := [key for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]:
            raise NPEError(f"WORLD_SIZE={size} is set, but not {', '.join(missing)}: start the run with torchrun "
                           f"(docs/distributed.md), or unset WORLD_SIZE")
        for key, (low, high) in {"RANK": (0, size - 1), "LOCAL_RANK": (0, size - 1), "MASTER_PORT": (1, 65535)}.items():
            number(key, low, high)
    return size


def replicate(model):
    """The module to run training steps through: DDP around `model`, or `model` itself in one process.

    Keep using `model` for saving and evaluation: its state dict keys stay clean.
    """
    if not dist.is_initialized():
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def share(tensor):
    """This rank's contiguous share of `tensor` along its first dimension (all of it in one process)."""
    return tensor.tensor_split(world_size())[rank()]


def average_(tensor):
    """Replace `tensor` by its mean over the ranks, in place."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= world_size()
    return tensor


def earliest_(step):
    """Replace `step` (0: none) by the smallest nonzero value over the ranks, in place."""
    if dist.is_initialized():
        none = torch.iinfo(step.dtype).max
        step.copy_(torch.where(step == 0, none, step))
        dist.all_reduce(step, dist.ReduceOp.MIN)
        step.copy_(torch.where(step == none, 0, step))
    return step


def weighted_mean(value, weight):
    """The mean of the ranks' `value`s weighted by their `weight`s (host floats; `value` in one process)."""
    if not dist.is_initialized():
        return value
    both = torch.tensor([value * weight, weight], dtype=torch.float64)
    dist.all_reduce(both, group=_host_group)
    return (both[0] / both[1]).item()


def seed_per_rank(seed, step):
    """Ranks other than 0 reseed torch's generator (dropout) from (seed, rank, step), so that their dropout
    masks differ from rank 0's, which keeps the generator a single process would have."""
    if rank():
        torch.manual_seed(hash((seed, rank(), step)))  # hashes of ints are the same in every process


class Vote:
    """The largest of the ranks' integers, the same on every rank, one call late.

    Each call starts an all-reduce of this rank's value and returns the one started by the previous call,
    which had a whole training step to arrive: no rank waits on the network. In one process: the value
    itself, at once.
    """

    def __init__(self):
        self.pending = None  # (work, tensor) of the previous call

    def __call__(self, value):
        if not dist.is_initialized():
            return value
        ballot = torch.tensor(value)
        work = dist.all_reduce(ballot, dist.ReduceOp.MAX, group=_host_group, async_op=True)
        previous, self.pending = self.pending, (work, ballot)
        if previous is None:
            return 0
        previous[0].wait()
        return int(previous[1])
