"""Torch's CPU threads during training, adapted to the load by the step rate measured, not the cores counted.

A thread count picked once, at the start, fails when another job starts later: on 2 cores, 2 threads ran a
training at 1.4-1.75x the speed of one on a quiet machine, and at 0.05-0.18x of it once another job held a
core (each step waits for the thread that has to share its core). So training times its own steps. When
the step rate at the current count falls, and every PERIOD_S seconds of steps anyway, it tries the other
count for one window and keeps whichever ran faster. npe.bench measures it with a job started mid-run.
"""
import os
import time

import torch

PERIOD_S = 30.0  # seconds of steps between trials of the other count while the rate holds
WINDOW_S = 1.0  # seconds of steps per measurement, of the current count and of a trial
DROP = 0.7  # a window this much slower than the rate the last trial settled on starts a trial at once
MARGIN = 1.05  # the tried count must be this much faster to take over, so that noise does not flip it


def thread_text(count):
    return f"{count} CPU thread{'' if count == 1 else 's'}"


class ThreadTuner:
    """`with tuner: train_step(...)` around each training step; only the time inside counts, so validation
    and saving between steps do not. Switches between `counts` (two thread counts, e.g. (1, 2)), starting
    from torch's current count. `clock` and `set_threads` are injectable for tests."""

    def __init__(self, counts, clock=time.perf_counter, set_threads=torch.set_num_threads):
        self.counts, self.clock, self.set_threads = counts, clock, set_threads
        self.current = torch.get_num_threads()
        self.trying = None  # the count on trial, or None
        self.settled = None  # steps/s of the current count when last chosen or measured after a trial
        self.last = None  # steps/s of the current count in its latest window
        self.steps, self.busy, self.since_trial = 0, 0.0, 0.0
        self.warmup = 0  # steps not timed after a switch: the first one at a new count pays for its threads
        self.switches = 0

    def __enter__(self):
        self.start = self.clock()
        return self

    def __exit__(self, *exc):
        spent = self.clock() - self.start
        if exc[0] is not None:
            return
        if self.warmup:
            self.warmup -= 1
            return
        self.steps, self.busy = self.steps + 1, self.busy + spent
        if self.busy >= WINDOW_S:
            rate = self.steps / self.busy
            self.steps, self.busy = 0, 0.0
            if self.trying:
                self._trial_done(rate)
            else:
                self._held(rate)

    def _held(self, rate):
        self.last, self.since_trial = rate, self.since_trial + WINDOW_S
        self.settled = self.settled or rate
        if self.since_trial >= PERIOD_S or rate < DROP * self.settled:
            self.trying = next(c for c in self.counts if c != self.current)
            self._use(self.trying)

    def _trial_done(self, rate):
        if rate > MARGIN * self.last:
            self.current, self.settled = self.trying, rate
            self.switches += 1
        else:
            self.settled = self.last
            self._use(self.current)
        self.trying, self.since_trial = None, 0.0

    def _use(self, count):
        self.set_threads(count)
        self.warmup = 1


def adaptive_counts(requested):
    """The two thread counts a training on the CPU switches between, or None for a fixed count: when
    --threads was given, OMP_NUM_THREADS is set, or this process may use one core only."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested or "OMP_NUM_THREADS" in os.environ or cores < 2:
        return None
    return (1, cores)
