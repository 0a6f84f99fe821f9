"""The benchmark (python -m npe.bench --tiny) end to end: a row for every measurement, of finite,
positive numbers, the same in JSON and CSV, under a header that names the machine. No timing is asserted."""
import csv
import json
import math
import subprocess
import sys

import pytest

from conftest import CHILD_ENV, REPO

pytestmark = pytest.mark.slow

KEYS = ["train_classic", "train_modern", "pairs_classic", "pairs_modern", "train_modern_bf16", "utilization_classic",
        "utilization_modern", "simulate_speed", "simulate_time", "simulate_memory", "rollout_classic", "rollout_modern",
        "budget_classic", "budget_modern", "busy_auto", "busy_fixed"]
NUMBERS = ["ours", "baseline", "ratio"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """stdout, the JSON and the CSV rows of one tiny run on the CPU."""
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run([sys.executable, "-m", "npe.bench", "--tiny", "--device", "cpu", "--out_dir", str(out)],
                            cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    with open(out / "bench_cpu.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    return result.stdout, json.loads((out / "bench_cpu.json").read_text()), csv_rows


def test_json_has_a_row_for_every_measurement(bench):
    _, report, _ = bench
    assert [r["key"] for r in report["rows"]] == KEYS


def test_every_json_row_has_finite_positive_numbers(bench):
    _, report, _ = bench
    for r in report["rows"]:
        for column in NUMBERS:
            assert math.isfinite(r[column]) and r[column] > 0, (r["key"], column, r[column])
        assert r["ratio_unit"] in ("x", "%")


def test_csv_holds_the_same_rows_as_the_json(bench):
    _, report, csv_rows = bench
    assert [r["key"] for r in csv_rows] == KEYS
    assert list(csv_rows[0]) == list(report["rows"][0])
    for from_csv, from_json in zip(csv_rows, report["rows"]):
        for column in NUMBERS:
            assert float(from_csv[column]) == pytest.approx(from_json[column])


def test_output_names_the_device_torch_and_threads_and_prints_the_table(bench):
    stdout, report, _ = bench
    env = report["environment"]
    assert env["device"] == "cpu" and env["threads"] == 1 and env["device_name"]
    header = stdout.splitlines()[0]
    assert env["device_name"] in header and f"torch {env['torch']}" in header and "1 threads" in header
    assert all(r["measurement"] in stdout for r in report["rows"])
