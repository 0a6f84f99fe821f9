"""Torch's CPU threads: chosen from the cores other jobs leave free, or as asked."""
import os

import torch

from npe.cli import free_cores, set_threads


def test_free_cores_is_at_least_one_and_at_most_this_process_may_use():
    assert 1 <= free_cores(seconds=0.05) <= len(os.sched_getaffinity(0))


def test_asked_threads_are_set_and_omp_num_threads_wins_over_auto(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert set_threads(0) == 2  # auto leaves a thread count the user set through OMP_NUM_THREADS
    finally:
        torch.set_num_threads(before)
