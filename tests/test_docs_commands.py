"""Every command in the docs runs as written.

Collects the fenced ```bash blocks of README.md and docs/*.md. For each command line that invokes

* a script ``tools/*.py`` or ``benchmarks/*.py`` (through ``python``, ``.venv/bin/python`` or directly),
* a module ``python -m objguided_d2...``,
* a console entry point ``objguided-*`` (read from setup.py),

it runs that program with ``--help`` (the dry form: nothing is trained, nothing is written) and asserts
exit code 0 and that every ``--flag`` the doc's line uses is listed in the ``--help`` output, so a renamed
or removed option fails here. ``--help`` is run once per program (cached). ``make TARGET`` lines are not
run; the Makefile must have the target. Every ``configs/...yaml`` a command names must exist.

Conventions for doc authors (what this parser understands):

* continuation lines end with ``\\``; ``#`` starts a comment; ``&&``, ``||``, ``;`` and ``|`` separate
  commands on one line; ``VAR=value`` before a command is an environment assignment;
* placeholders are upper-case words or example paths (``DIR``, ``IMAGES``, ``/data/my_cells``,
  ``output/mycells``); never ``<...>`` (the shell reads it as a redirection) and never ``[...]`` for
  optional parts: write the optional flags in a second command instead;
* a block that is not meant to be run as shell commands (a file listing, output) uses another fence
  language (``text``), not ``bash``.
"""
import functools
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
OPERATORS = {"&&", "||", ";", "|", "&"}
PYTHONS = re.compile(r"^(\S*/)?python(3(\.\d+)?)?$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SCRIPT = re.compile(r"^(tools|benchmarks)/[\w.-]+\.py$")


class Command(NamedTuple):
    doc: str  # file, relative to the repository
    line: int  # first line of the command in that file (1-based)
    text: str  # the command as written (continuations joined)
    tokens: Tuple[str, ...]


def _bash_blocks(path: str) -> List[Tuple[int, List[str]]]:
    """(first line number, lines) of every ```bash / ```sh / ```shell block of a Markdown file."""
    blocks, current, start = [], None, 0
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if current is None:
                m = re.match(r"^(`{3,}|~{3,})\s*(\w*)", stripped)
                if m:
                    current, start, fence = ([] if m.group(2) in ("bash", "sh", "shell") else None), number + 1, m.group(1)
                    if current is None:  # another language: skip to its closing fence
                        current, start = "skip", number + 1
            elif stripped.startswith(fence) and stripped.strip("`~") == "":
                if current != "skip":
                    blocks.append((start, current))
                current = None
            elif current != "skip":
                current.append(line.rstrip("\n"))
    assert current is None, f"{path}: unclosed code fence opened at line {start - 1}"
    return blocks


def _split_commands(tokens: List[str]) -> List[List[str]]:
    commands, current = [], []
    for tok in tokens:
        if tok in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(tok)
    commands.append(current)
    return [c for c in commands if c]


def _tokenize(text: str) -> List[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def collect_commands() -> List[Command]:
    out = []
    for doc in DOC_FILES:
        for start, lines in _bash_blocks(doc):
            i = 0
            while i < len(lines):
                first = i
                text = lines[i]
                while text.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                if not text.strip() or text.strip().startswith("#"):
                    continue
                try:
                    tokens = _tokenize(text)
                except ValueError as e:  # unbalanced quotes
                    raise AssertionError(f"{doc}:{start + first}: cannot parse {text!r}: {e}")
                for cmd in _split_commands(tokens):
                    out.append(Command(doc, start + first, text.strip(), tuple(cmd)))
    return out


@functools.lru_cache(maxsize=None)
def entry_points() -> Dict[str, str]:
    """console_scripts of setup.py: name -> "module:function"."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        text = f.read()
    return dict(re.findall(r'"(objguided-[\w-]+)\s*=\s*([\w.]+:\w+)"', text))


@functools.lru_cache(maxsize=None)
def make_targets() -> frozenset:
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", f.read(), flags=re.M))


def program_of(tokens: Tuple[str, ...]) -> Optional[Tuple[str, str, Tuple[str, ...]]]:
    """(kind, program, its arguments) for a command this test checks, else None.
    kind: "script" (a .py file), "module" (python -m), "entry" (console script), "make"."""
    toks = list(tokens)
    while toks and ENV_ASSIGNMENT.match(toks[0]):
        toks.pop(0)
    if not toks:
        return None
    head = toks[0]
    if head == "make":
        return "make", "make", tuple(toks[1:])
    if head in entry_points() or head.startswith("objguided-"):
        return "entry", head, tuple(toks[1:])
    if SCRIPT.match(head.lstrip("./")):
        return "script", head.lstrip("./"), tuple(toks[1:])
    if PYTHONS.match(head):
        args = toks[1:]
        while args and args[0].startswith("-") and args[0] != "-m":  # python -u, -X ...
            args.pop(0)
        if len(args) >= 2 and args[0] == "-m" and args[1].startswith("objguided_d2"):
            return "module", args[1], tuple(args[2:])
        if args and SCRIPT.match(args[0].lstrip("./")):
            return "script", args[0].lstrip("./"), tuple(args[1:])
    return None


@functools.lru_cache(maxsize=None)
def help_text(kind: str, program: str) -> Tuple[int, str]:
    """Exit code and output of PROGRAM --help (run once per program)."""
    if kind == "script":
        argv = [sys.executable, os.path.join(ROOT, program), "--help"]
    elif kind == "module":
        argv = [sys.executable, "-m", program, "--help"]
    else:
        target = entry_points().get(program)
        if target is None:
            return 127, f"{program}: not a console_scripts entry point of setup.py ({sorted(entry_points())})"
        module, func = target.split(":")
        argv = [sys.executable, "-c",
                f"import sys; sys.argv = [{program!r}, '--help']; from {module} import {func}; {func}()"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


COMMANDS = collect_commands()
CHECKED = [(c, program_of(c.tokens)) for c in COMMANDS]
CHECKED = [(c, p) for c, p in CHECKED if p is not None]


def test_docs_have_commands():
    docs = {c.doc for c, _ in CHECKED}
    assert "README.md" in docs, "README.md has no checked command: was a bash fence renamed?"
    kinds = {p[0] for _, p in CHECKED}
    assert {"script", "make"} <= kinds, kinds


def test_no_angle_bracket_placeholders():
    bad = [f"{c.doc}:{c.line}: {c.text}" for c in COMMANDS if re.search(r"<[^<>\s]*>", c.text)]
    assert not bad, "placeholders must be UPPER_CASE words, not <...>:\n" + "\n".join(bad)


@pytest.mark.parametrize("command,program", CHECKED,
                         ids=[f"{c.doc}:{c.line}:{p[1]}" for c, p in CHECKED])
def test_command_runs_as_written(command: Command, program):
    kind, name, args = program
    where = f"{command.doc}:{command.line}: {command.text}"
    if kind == "make":
        targets = [a for a in args if not ENV_ASSIGNMENT.match(a) and not a.startswith("-")]
        for target in targets or ["setup"]:
            assert target in make_targets(), f"{where}\nMakefile has no target {target!r}"
        return
    if kind == "script":
        assert os.path.isfile(os.path.join(ROOT, name)), f"{where}\n{name} does not exist"
    for arg in args:
        if re.match(r"^configs/[\w./-]+\.ya?ml$", arg):
            assert os.path.isfile(os.path.join(ROOT, arg)), f"{where}\n{arg} does not exist"
    rc, text = help_text(kind, name)
    assert rc == 0, f"{where}\n`{name} --help` exited {rc}:\n{text[-3000:]}"
    flags = sorted({a.split("=", 1)[0] for a in args if re.match(r"^--[A-Za-z]", a)})
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"{where}\n{name} --help does not list {missing}"


def _python_blocks(path: str) -> List[str]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


MAKE_MODEL_FOLDER = """
import os, numpy as np, cv2, torch
from detectron2.modeling import build_model
from objguided_d2.config import load_config
cfg = load_config(os.path.join({root!r}, "configs/tiny/objguided_R18_tiny.yaml"), ["MODEL.DEVICE", "cpu"])
os.makedirs("output/mycells")
with open("output/mycells/config.yaml", "w") as f:
    f.write(cfg.dump())
torch.manual_seed(0)
torch.save({{"model": build_model(cfg).state_dict()}}, "output/mycells/model_final.pth")
cv2.imwrite("my_image.png", np.random.RandomState(0).randint(0, 255, (96, 128, 3), dtype=np.uint8))
"""


def test_readme_python_example_runs(tmp_path):
    """The README's Python example, as written, on a model folder with random weights."""
    blocks = _python_blocks("README.md")
    assert blocks, "README.md has no ```python block"
    example = blocks[0]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    setup = subprocess.run([sys.executable, "-c", MAKE_MODEL_FOLDER.format(root=ROOT)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert setup.returncode == 0, setup.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"README.md's Python example failed:\n{proc.stderr[-3000:]}"
    assert re.search(r"^\d+ objects$", proc.stdout, flags=re.M), proc.stdout
