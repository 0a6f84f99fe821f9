"""pyproject.toml: after `pip install -e .` (scripts/setup.sh does it) `import npe` works from any folder, and
the scripts find the shipped checkpoints, their defaults, wherever they are run from."""
import csv
import subprocess
import sys

import pytest

from conftest import CHILD_ENV, REPO

pytestmark = pytest.mark.slow


def test_npe_imports_from_another_folder_and_comes_from_this_repository(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import npe; print(npe.__file__)"], cwd=tmp_path, env=CHILD_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO / "npe" / "__init__.py")


def test_compare_from_another_folder_uses_every_shipped_model(tmp_path):
    command = [REPO / "compare_rollouts_classic_vs_modern.py", "--num_scenes", 2, "--rollout_steps", 2, "--out_png", "c.png"]
    result = subprocess.run([sys.executable, *map(str, command)], cwd=tmp_path, env=CHILD_ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shipped = {r["model"]: r["checkpoint"] for r in rows if r["checkpoint"]}
    assert shipped == {name: str(REPO / "pretrained" / f"{name}.pt")
                       for name in ("npe_classic", "npe_modern", "npe_next_state")}
