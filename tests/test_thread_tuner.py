"""Training's CPU threads follow the load: a simulated machine where two threads run a step in 0.6 of one
thread's time while it is quiet, and in ten times it once another job holds a core (the collapse measured on
2 cores). The tuner sees only its clock, as in training. And training uses it only when left to choose."""
import pytest
import torch

from conftest import CLASSIC, TINY_TRAINING, cli, ok
from npe.threads import PERIOD_S, WINDOW_S, ThreadTuner, adaptive_counts, thread_text

ONE_THREAD_STEP_S = 0.01
STEP_S = {(1, False): ONE_THREAD_STEP_S, (2, False): 0.6 * ONE_THREAD_STEP_S,
          (1, True): ONE_THREAD_STEP_S, (2, True): 10 * ONE_THREAD_STEP_S}


class Machine:
    """A clock that moves by the step time of the thread count in use, quiet or busy."""

    def __init__(self):
        self.now, self.threads, self.busy = 0.0, 2, False

    def clock(self):
        return self.now

    def set_threads(self, count):
        self.threads = count

    def run(self, tuner, seconds):
        """Steps for `seconds`; the steps per second achieved."""
        start, steps = self.now, 0
        while self.now - start < seconds:
            with tuner:
                self.now += STEP_S[(self.threads, self.busy)]
            steps += 1
        return steps / (self.now - start)


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the count a run starts from
    m = Machine()
    return m, ThreadTuner((1, 2), clock=m.clock, set_threads=m.set_threads)


def test_a_quiet_machine_keeps_two_threads_at_nearly_their_speed(machine):
    m, tuner = machine
    assert m.run(tuner, 120) > 0.95 / STEP_S[(2, False)]
    assert tuner.current == 2


def test_a_job_started_mid_run_drops_to_one_thread_keeping_80_percent_of_its_speed(machine):
    m, tuner = machine
    m.run(tuner, 20)
    m.busy = True
    assert m.run(tuner, 60) >= 0.8 / ONE_THREAD_STEP_S
    assert tuner.current == 1 and m.threads == 1


def test_the_switch_comes_within_a_few_windows_of_the_job_starting(machine):
    m, tuner = machine
    m.run(tuner, 20)
    m.busy = True
    m.run(tuner, 4 * WINDOW_S + 12 * STEP_S[(2, True)])
    assert tuner.current == 1


def test_two_threads_come_back_when_the_other_job_ends(machine):
    m, tuner = machine
    m.run(tuner, 20)
    m.busy = True
    m.run(tuner, 20)
    m.busy = False
    m.run(tuner, PERIOD_S + 3 * WINDOW_S)
    assert tuner.current == 2


def test_time_outside_the_steps_does_not_count(machine):
    m, tuner = machine
    m.run(tuner, 5)
    for _ in range(20):  # a slow validation after every step would look like a collapse
        with tuner:
            m.now += STEP_S[(2, False)]
        m.now += 1.0
    assert tuner.current == 2 and tuner.switches == 0


def test_threads_adapt_only_when_left_to_choose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert adaptive_counts(0) == (1, 2)
    assert adaptive_counts(2) is None  # --threads 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert adaptive_counts(0) is None  # one core: nothing to choose
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert adaptive_counts(0) is None


def test_thread_counts_read_in_the_singular_and_the_plural():
    assert thread_text(1) == "1 CPU thread" and thread_text(2) == "2 CPU threads"


def test_training_left_to_choose_adapts_and_a_resumed_run_adapts_again(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    before = torch.get_num_threads()
    try:
        flags = ["--dataset_prefix", dataset, "--name", "run", "--ckpt_dir", tmp_path, "--metrics_csv",
                 tmp_path / "m.csv", *TINY_TRAINING]
        ok(cli(CLASSIC, *flags, "--stop_after_steps", 4))
        assert torch.load(tmp_path / "run.pt", weights_only=True)["args"]["cpu_threads"] == 0  # 0: adapted
        ok(cli(CLASSIC, *flags, "--resume"))
        assert torch.load(tmp_path / "run.pt", weights_only=True)["args"]["cpu_threads"] == 0
    finally:
        torch.set_num_threads(before)
