"""The README and docs/: commands use only flags their scripts (and torchrun) take, every script is shown,
the README stays short, its Python runs, and every local link points to a file."""
import contextlib
import importlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import REPO, check, run_python

SCRIPTS = sorted(p.name for p in REPO.glob("*.py"))
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
QUICKSTART = REPO / "scripts" / "quickstart.sh"
README_MAX_CHARS = 12_000


def shell_text(path):
    """The shell a file shows: all of a script; a Markdown file's fenced code blocks and inline code."""
    text = path.read_text()
    if path.suffix != ".md":
        return text
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return "\n".join(fenced + re.findall(r"`([^`\n]+)`", prose))


def commands(text):
    """(program, [flags]) for each `python SCRIPT.py ...` and `python -m npe.MODULE ...` command in text
    (backslash-continued lines joined), and for each `torchrun --flag=value... SCRIPT.py ...` command,
    ("torchrun", [its flags]) and the script's."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        match = re.search(r"(?:python|\$PY|(torchrun)((?:\s+--\S+)*))\s+(\w+\.py|-m\s+npe\b[\w.]*)(.*)", line)
        if match:
            if match[1]:
                found.append(("torchrun", [w.split("=")[0] for w in match[2].split()]))
            program = match[3].removeprefix("-m").strip()
            words = shlex.split(match[4].split("#")[0])
            found.append((program, [w for w in words if w.startswith("--")]))
    return found


def test_every_script_appears_in_a_command_of_the_readme_or_docs():
    shown = {program for path in DOCS for program, _ in commands(shell_text(path))}
    assert set(SCRIPTS) - shown == set()


def help_text(module):
    """What `python SCRIPT.py --help` or `python -m MODULE --help` prints, from the module's main() run in
    this process (a fresh interpreter per script took most of this file's time)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(sys, "argv", [module, "--help"])
        with pytest.raises(SystemExit) as exit_:
            importlib.import_module(module).main()
    assert exit_.value.code == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def program_flags():
    """{program: set of flags}, read from the --help of each script, torchrun and each module the text runs."""
    modules = {program for path in [*DOCS, QUICKSTART] for program, _ in commands(shell_text(path))
               if not program.endswith(".py") and program != "torchrun"}
    torchrun = check(run_python("-m", "torch.distributed.run", "--help")).stdout
    return {"torchrun": set(re.findall(r"--[\w-]+", torchrun)),
            **{module: set(re.findall(r"--[\w-]+", help_text(module))) for module in modules},
            **{s: set(re.findall(r"--\w+", help_text(Path(s).stem))) for s in SCRIPTS}}


@pytest.mark.parametrize("path", [*DOCS, QUICKSTART], ids=lambda p: str(p.relative_to(REPO)))
def test_commands_use_only_flags_their_program_takes(path, program_flags):
    problems = []
    for program, flags in commands(shell_text(path)):
        if program not in program_flags:
            problems.append(f"{program} is not a script of this repo")
        elif unknown := set(flags) - program_flags[program]:
            problems.append(f"{program} does not take {sorted(unknown)}")
    assert not problems, "\n".join(problems)


def test_readme_is_at_most_12000_characters():
    assert len(README.read_text()) <= README_MAX_CHARS


def local_links(path):
    """Targets of the Markdown links and images in `path` that point into the repository, anchors dropped."""
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", path.read_text())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][\w+.-]*:|#", t)]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_local_link_points_to_an_existing_file(path):
    missing = [target for target in local_links(path) if not (path.parent / target).exists()]
    assert not missing, f"{path.name} links to missing files: {missing}"


@pytest.mark.slow
def test_readme_python_runs_twice_as_written():
    """The README's ```python blocks, run in order in one namespace from the repository root, twice (so each
    public function is called twice), then checked for the shapes the comments promise."""
    code = "\n".join(re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M))
    assert "npe.rollout(" in code
    checks = "assert pred.shape == (8, 50, 4, 5) and truth.shape == pred.shape, (pred.shape, truth.shape)"
    check(run_python("-c", "\n".join([code, code, checks]), PYTHONPATH=str(REPO)))
