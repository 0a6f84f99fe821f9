"""The README and the quickstart script use only flags that their scripts (and torchrun) take."""
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, check, run_script

SCRIPTS = sorted(p.name for p in REPO.glob("*.py"))


def commands(text):
    """(script, [flags]) for each `python SCRIPT.py ...` command in text (backslash-continued lines joined),
    and for each `torchrun --flag=value... SCRIPT.py ...` command, ("torchrun", [its flags]) and the script's."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        match = re.search(r"(?:python|\$PY|(torchrun)((?:\s+--\S+)*))\s+(\w+\.py)\s+(.*)", line)
        if match:
            if match[1]:
                found.append(("torchrun", [w.split("=")[0] for w in match[2].split()]))
            words = shlex.split(match[4].split("#")[0])
            found.append((match[3], [w for w in words if w.startswith("--")]))
    return found


README_COMMANDS = commands((REPO / "README.md").read_text())
QUICKSTART_COMMANDS = commands((REPO / "scripts" / "quickstart.sh").read_text())


def test_readme_has_every_script_command():
    assert {script for script, _ in README_COMMANDS} - {"torchrun"} == set(SCRIPTS)


@pytest.fixture(scope="module")
def script_flags():
    """{script: set of flags}, read from each script's --help, and torchrun's."""
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True, text=True)
    return {"torchrun": set(re.findall(r"--[\w-]+", check(torchrun).stdout)),
            **{s: set(re.findall(r"--\w+", check(run_script(s, "--help")).stdout)) for s in SCRIPTS}}


@pytest.mark.parametrize("script,flags", README_COMMANDS + QUICKSTART_COMMANDS,
                         ids=[f"{s}:{i}" for i, (s, _) in enumerate(README_COMMANDS + QUICKSTART_COMMANDS)])
def test_command_flags_exist(script, flags, script_flags):
    assert script in script_flags, f"{script} is not a script of this repo"
    unknown = set(flags) - script_flags[script]
    assert not unknown, f"{script} does not take {sorted(unknown)}"
