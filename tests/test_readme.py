"""Every command and code block of ``README.md``, executed offline as a user on a fresh clone would run it.

What is executed, read from README.md itself (a new line is executed too; one this module cannot run fails
naming its README line, nothing is skipped silently):

* every line of a ```bash block (comments stripped; ``\\`` continuations joined);
* every ```python block, as a script in a fresh interpreter;
* every inline code span in the prose that is a command with arguments (``visionpeft <cmd> <arg> ...`` or
  ``tensorboard ...``); a bare ``visionpeft params`` / ``yolo train`` in a sentence is a name, not a command.

Each runs in a subprocess, offline (``YOLO_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, an empty Hugging Face cache and a
temporary ``YOLO_CONFIG_DIR``), in a temporary working directory ``work/`` whose sibling ``shared/`` stands for
the ``../shared`` beside a clone: weights linked from the real one, datasets copied (Ultralytics writes label
caches beside them; the large ones are cut to a few images per split). Each must exit 0 (a Python block: raise
nothing). A line that needs something only reachable online (the table ``ONLINE``) is run both ways:

(a) as written with nothing local: exit status 2, exactly one ``visionpeft: error:`` line on stderr, no
    ``Traceback``, naming what is missing and how to pass a local file (``key=path/to/...``);
(b) with a local stand-in: ``yolo11n.pt`` is ``YOLO("yolo11n.yaml").save("yolo11n.pt")`` written into the working
    directory, where Ultralytics looks for it (the same architecture with **random weights**: nothing here checks
    accuracy), and ``coco8.yaml`` finds ``/shared/data/coco8`` copied into Ultralytics' ``datasets_dir`` (set in
    the temporary settings); a timm model the line would download from the Hugging Face hub gets the local
    alternative the error line names, ``weights=`` a local checkpoint of that architecture. Then: exit 0.

The exception to (a): the YOLO Python script's ``YOLO("yolo11n.pt")`` is Ultralytics' own code, not visionpeft's;
as written offline it must fail in Ultralytics' download naming ``yolo11n.pt`` (the README's comment on that line
says how to pass a local file).

Substitutions, all in the tables below:

* ``PLACEHOLDERS``: the README's placeholders become real files: ``RUN_DIR`` a run directory written by an earlier
  README line (each ``RUN_DIR`` line runs on a classification run and on a detection run), ``COMPARE_DIR`` /
  ``<compare_dir>`` the compare directory of ``visionpeft compare quickstart``, ``DIR`` / ``PATH`` /
  ``path/to/images`` a small ImageFolder (or, after ``-o`` / ``out=``, a new output folder), ``PATH.safetensors``,
  ``PATH/weights.pt`` and ``PATH/data.yaml`` files from ``shared/``, ``images/`` a folder of 2 images, ``RECIPE`` the
  packaged ``classification/lora_cnn``. ``[key=value]`` marks an option: such a line runs without its options and
  with all of them.
* ``SHORT``: "short settings", ``key=value`` items appended to every ``train`` / ``compare`` line (the later key
  wins, so they override the line's ``epochs=5``): one epoch on tiny images and a few images per class. In Python
  blocks ``epochs=5`` becomes ``PY_SHORT`` in the source text.
* ``CI_RUNS``: the set-up line (``python3 -m venv ... && pip install ... && visionpeft compare ...``) and
  ``python -m pytest -q`` are what ``.ci/run`` executes itself (a venv, an install, the full quickstart, this test
  suite); here it is only checked that ``.ci/run`` runs each of their commands.
* ``PY_CONTEXT``: a Python block that continues a reader's session (uses ``model`` and adapters saved before) gets
  that context first: a fresh ``vit_tiny_patch16_224`` and the adapters it loads, saved from the same base.

``torchrun --nproc_per_node=2 -m visionpeft train RECIPE`` is not run: two CPU processes (gloo) on the tiny
recipe took 510 s here on a shared 2-core machine (each process builds the model and the loaders; they contend for
the cores), far over this module's budget. Instead it is checked to be the documented DDP form (``TORCHRUN``)
and that the classification runner's distributed module exists; ``tests/test_wrappers.py`` and
``tests/test_adapter_switching.py`` cover DDP itself (gloo, one process).

``EXPECTED_ERRORS``: lines that, on the runs made here, must end in one error line rather than exit 0, each
because the README's line needs what these runs lack (named in the table).

The environment handed to commands drops ``PYTEST_*``: Ultralytics sees ``PYTEST_CURRENT_TEST`` and then writes its
runs into its own package folder (``ultralytics/../tests/tmp/runs``) instead of ``runs_dir``, which no user sees.

``tensorboard --logdir DIR`` would serve until stopped: the ``tensorboard`` beside this
Python is run with ``--inspect`` added, which reads the same event files and exits.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

README = REPO / "README.md"
BIN = Path(sys.executable).parent

#: Short settings appended to each train / compare line, by backend (the later key wins).
SHORT = {
    "ultralytics": ["epochs=1", "imgsz=64", "batch=2", "workers=0", "device=cpu", "plots=false"],
    "timm": ["epochs=1", "imgsz=32", "workers=0", "progress=false", "dataset.max_per_class=4"],
}
#: In Python blocks: README text -> what runs.
PY_SHORT = {"epochs=5": 'epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False'}

#: README text (the whole command) -> why the test does not run it: .ci/run does, and here each of its commands is
#: checked to be in .ci/run.
CI_RUNS = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && visionpeft compare '
    "recipes/quickstart.yaml": "the set-up and main job: .ci/run makes the venv, installs and runs the quickstart",
    "python -m pytest -q": "the test suite itself: .ci/run runs it (this module is part of it)",
}

#: Names only reachable online: (pattern in the README line, what the offline error line must name, extra items
#: that give (b) its local stand-in, or "" where the stand-in is a file placed where Ultralytics looks).
ONLINE = [
    (r"yolo11n\.pt", ("yolo11n.pt", "model=path/to/yolo11n.pt"), []),
    (r"coco8\.yaml", ("coco8", "data=path/to/"), []),
    (r"model=vit_tiny_patch16_224\b", ("vit_tiny_patch16_224", "Hugging Face hub", "weights=path/to/"),
     ["weights=../shared/weights/vit_tiny_patch16_224.in1k.safetensors"]),
    (r"classification/lora_vit\b", ("vit_tiny_patch16_224", "Hugging Face hub", "weights=path/to/"),
     ["weights=../shared/weights/vit_tiny_patch16_224.in1k.safetensors"]),
]

#: README line (placeholders unsubstituted) and run kind -> what its one error line must name, and why.
EXPECTED_ERRORS = {
    ("visionpeft eval RUN_DIR --split test", "classification"): (
        "no split 'test'", "the digits have train/val only: the error names the missing split"),
    ("visionpeft eval RUN_DIR --split test", "detect"): (
        "missing 'test:'", "coco8.yaml has no test: the error names the missing key"),
    ("visionpeft resume RUN_DIR", "classification"): (
        "nothing to resume", "the run finished; killed runs resume in tests/tasks/ultralytics/test_resume.py, "
        "tests/tasks/classification/test_train.py"),
    ("visionpeft resume RUN_DIR", "detect"): ("nothing to resume", "as above"),
    ("visionpeft export RUN_DIR --format peft -o DIR", "detect"): (
        "no LoRA", "the detection run is freeze=10: nothing PEFT can represent; the classification run exports"),
}
#: The documented DDP form (not run: see the module docstring).
TORCHRUN = re.compile(r"^torchrun --nproc_per_node=\d+ -m visionpeft train \S+$")

#: The README lines whose run (variant b) ``RUN_DIR`` / ``COMPARE_DIR`` stand for, by the start of their text.
PRODUCERS = {
    "classification": "visionpeft train recipes/classification/lora_vit.yaml",
    "detect": "visionpeft train model=yolo11n.pt data=coco8.yaml freeze=10",
    "compare": "visionpeft compare quickstart",
}

#: Placeholders -> files, in order (longest first); ``{new}`` is a fresh output folder per command.
PLACEHOLDERS = [
    (r"(?<=-o )DIR\b|(?<=out=)DIR\b", "{new}"),
    (r"\bPATH\.safetensors\b", "../shared/weights/tf_efficientnet_lite0.in1k.safetensors"),
    (r"\bPATH/weights\.pt\b", "../shared/weights/yolov5nu-cocobackbone.pt"),
    (r"\bPATH/data\.yaml\b", "../shared/data/coco8/data.yaml"),
    (r"\bpath/to/images\b|\bDIR\b|\bPATH\b", "{images_dir}"),
    (r"<compare_dir>|\bCOMPARE_DIR\b", "{compare}"),
    (r"\bRUN_DIR\b", "{run_dir}"),
    (r"\bRECIPE\b", "classification/lora_cnn"),
    (r"(?<![\w/])images/", "{images}"),  # as written: the folder is work/images
]

#: First line of a Python block -> code run before it (the session it continues).
PY_CONTEXT = {
    'visionpeft.load_adapter(model, "runs/lora/adapter", name="lora")': """\
        import copy, timm, torch, visionpeft
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=10)
        for name, strategies in [("lora", [{"method": "lora", "rank": 8}, {"method": "head"}]),
                                 ("vpt", [{"method": "vpt", "tokens": 4}, {"method": "head"}])]:
            trained = copy.deepcopy(model)
            visionpeft.apply(trained, strategies)
            visionpeft.save_adapter(trained, f"runs/{name}/adapter")
        """,
}

#: Shared datasets cut to this many images per split (and class) in the copy.
_KEEP = 4


# ------------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class Command:
    text: str  # as in the README, comment stripped, whitespace joined
    line: int  # README line
    kind: str  # "bash" | "python" | "inline"

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text.splitlines()[0][:90]}"


def _bash_lines(body: str, first: int) -> list[Command]:
    out, pending, start = [], "", first
    for i, raw in enumerate(body.splitlines()):
        if not pending:
            start = first + i
        line = _strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = " ".join((pending + line).split())
        pending = ""
        if text:
            out.append(Command(text, start, "bash"))
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` outside quotes, after a blank or at the start)."""
    quote = ""
    for i, c in enumerate(line):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


@functools.cache
def readme_commands() -> list[Command]:
    """Every command and code block of the README, in order; an unknown block kind fails here."""
    text = README.read_text(encoding="utf-8")
    out: list[Command] = []
    fence = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
    for m in fence.finditer(text):
        lang, first = m.group(1).strip(), text.count("\n", 0, m.start(2)) + 1
        if lang == "bash":
            out += _bash_lines(m.group(2), first)
        elif lang == "python":
            out.append(Command(m.group(2), first, "python"))
        else:
            out.append(Command(f"```{lang} block: this test runs bash and python blocks only", first, "unknown"))
    prose = fence.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(m.group(1).split())
        if re.match(r"(visionpeft \S+ \S|tensorboard \S)", span):
            out.append(Command(span, prose.count("\n", 0, m.start()) + 1, "inline"))
    seen: set[str] = set()
    return [c for c in out if not (c.text in seen or seen.add(c.text))]  # type: ignore[func-returns-value]


def _online(text: str) -> list[tuple[tuple[str, ...], list[str]]]:
    return [(names, extra) for pattern, names, extra in ONLINE if re.search(pattern, text)]


def _options(text: str) -> list[str]:
    """``a [b] [c]`` -> ``["a", "a b c"]``; a text without brackets as it is."""
    if not re.search(r"\s\[[^\]]+\]", text):
        return [text]
    return [" ".join(re.sub(r"\s\[[^\]]+\]", "", text).split()), " ".join(re.sub(r"\[([^\]]+)\]", r"\1", text).split())]


def cases() -> list[pytest.param]:
    out = []
    for cmd in readme_commands():
        tag = f"L{cmd.line}"
        if cmd.text in CI_RUNS:
            out.append(pytest.param(cmd, "ci", None, id=f"{tag}-ci"))
            continue
        if cmd.kind == "python" or cmd.kind == "unknown":
            variants = [None]
        else:
            variants = _options(cmd.text)
        for j, variant in enumerate(variants):
            sub = f"{tag}" + (f"-opt{j}" if len(variants) > 1 else "")
            kinds = ["classification", "detect"] if variant and "RUN_DIR" in variant else [None]
            for run in kinds:
                rid = sub + (f"-{run}" if run else "")
                if _online(cmd.text):
                    out.append(pytest.param(cmd, "offline", (variant, run), id=f"{rid}-offline"))
                out.append(pytest.param(cmd, "local", (variant, run), id=f"{rid}-local"))
    return out


# -------------------------------------------------------------------------------------------- the world
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _copy_subset(src: Path, dst: Path, keep: int = _KEEP) -> None:
    """``src`` copied with at most ``keep`` images (and their label files) per folder."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or rel.parts[-1].endswith(".cache"):
            continue
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            siblings = sorted(p for p in path.parent.iterdir() if p.suffix.lower() == path.suffix.lower())
            if siblings.index(path) >= keep:
                continue
        elif path.suffix == ".txt" and rel.parts[0] == "labels":
            image_dir = src / "images" / Path(*rel.parts[1:]).parent
            if not any((image_dir / (path.stem + s)).exists() for s in (".jpg", ".jpeg", ".png")) or sorted(
                    p.stem for p in image_dir.iterdir()).index(path.stem) >= keep:
                continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)


class World:
    """Temporary working directories, offline settings, stand-ins; every command's result cached by its text."""

    def __init__(self, root: Path, shared: Path) -> None:
        self.root, self.work, self.bare = root, root / "work", root / "bare"
        self.results: dict[tuple[str, str], subprocess.CompletedProcess[str]] = {}
        self.made: dict[tuple[str, str], list[Path]] = {}
        self.outputs = 0
        fake = root / "shared"
        (fake / "weights").mkdir(parents=True)
        for w in (shared / "weights").iterdir():
            (fake / "weights" / w.name).symlink_to(w)  # read only: nothing writes beside weights
        shutil.copytree(shared / "data" / "coco8", fake / "data" / "coco8")
        _copy_subset(shared / "data" / "package-seg-small", fake / "data" / "package-seg-small")
        _copy_subset(shared / "data" / "hymenoptera_data", root / "images_dir")
        for d in (self.work, self.bare, root / "datasets", root / "empty"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared / "data" / "coco8", root / "datasets" / "coco8")
        self._settings("local", root / "datasets", self.work, 'YOLO("yolo11n.yaml").save("yolo11n.pt")')
        self._settings("bare", root / "empty", self.bare, "")
        assert (self.work / "yolo11n.pt").is_file()
        import ultralytics.utils as uu

        (self.work / "images").mkdir()
        for name in ("bus.jpg", "zidane.jpg"):
            shutil.copy2(Path(uu.ASSETS) / name, self.work / "images" / name)

    def env(self, world: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONPEFT_", "PET_", "PYTEST_"))}
        env.update(YOLO_OFFLINE="1", HF_HUB_OFFLINE="1", YOLO_CONFIG_DIR=str(self.root / f"cfg-{world}"),
                   HF_HOME=str(self.root / "hf"), TORCH_HOME=str(self.root / "torch"), MPLBACKEND="Agg",
                   PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]), PET_MASTER_PORT=str(_free_port()))
        return env

    def _settings(self, world: str, datasets: Path, cwd: Path, extra: str) -> None:
        code = (f"from ultralytics import settings, YOLO\nsettings.update(datasets_dir={str(datasets)!r}, "
                f"weights_dir={str(self.root / 'empty')!r}, runs_dir={str(cwd / 'runs')!r})\n{extra}\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=self.env(world), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]

    def substitute(self, text: str, run: str | None) -> str:
        for pattern, value in PLACEHOLDERS:
            for _ in range(len(re.findall(pattern, text))):
                if value == "{new}":
                    self.outputs += 1
                    repl = str(self.work / f"out{self.outputs}")
                elif value == "{images_dir}":
                    repl = str(self.root / "images_dir")
                elif value == "{images}":
                    repl = "images/"
                elif value == "{compare}":
                    repl = str(self.produced("compare"))
                elif value == "{run_dir}":
                    assert run, text
                    repl = str(self.produced(run))
                else:
                    repl = value
                text = re.sub(pattern, lambda _m, r=repl: r, text, count=1)
        return text

    def produced(self, what: str) -> Path:
        """The run (or compare) directory the README line ``PRODUCERS[what]`` wrote, running it if needed."""
        cmd = next((c for c in readme_commands() if c.text.startswith(PRODUCERS[what])), None)
        assert cmd is not None, f"README has no line starting {PRODUCERS[what]!r} (PRODUCERS in {__file__})"
        proc, made = self.run_shell(cmd.text, "local")
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-3000:]}"
        marker = "runs.json" if what == "compare" else "recipe.yaml"
        dirs = [d for d in made if (d / marker).is_file()]
        assert dirs, f"{cmd}: wrote no directory holding {marker}"
        return dirs[0]

    def _argv(self, text: str, world: str) -> list[str]:
        argv = shlex.split(text)
        extra = [e for _names, extras in _online(text) for e in extras] if world == "local" else []
        if argv[0] == "torchrun":
            argv = [str(BIN / "torchrun"), *argv[1:]]
            i = argv.index("visionpeft")
            argv[i - 1:i + 1] = ["-m", "visionpeft"]
            start = i - 1
        elif argv[0] == "visionpeft":
            argv, start = [sys.executable, "-m", "visionpeft", *argv[1:]], 2
        elif argv[0] == "tensorboard":
            return [str(BIN / "tensorboard"), *argv[1:], "--inspect"]
        else:
            pytest.fail(f"README command {text!r}: this test runs visionpeft, torchrun and tensorboard lines only; "
                        "teach tests/test_readme.py how to run it")
        if argv[start + 1] in ("train", "compare"):
            argv += [*extra, *SHORT[_backend(argv[start + 2:])]]
        return argv

    def run_shell(self, text: str, world: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
        key = (text, world)
        if key not in self.results:
            cwd = self.work if world == "local" else self.bare
            before = {p.parent for p in cwd.rglob("*.json")}
            argv = self._argv(text, world)
            self.results[key] = subprocess.run(argv, cwd=cwd, env=self.env(world), capture_output=True, text=True,
                                               timeout=600)
            self.made[key] = sorted({p.parent for p in cwd.rglob("*.json")} - before)
        return self.results[key], self.made[key]

    def run_python(self, code: str, world: str, name: str) -> subprocess.CompletedProcess[str]:
        cwd = self.work if world == "local" else self.bare
        script = cwd / f"{name}.py"
        script.write_text(code, encoding="utf-8")
        return subprocess.run([sys.executable, str(script)], cwd=cwd, env=self.env(world), capture_output=True,
                              text=True, timeout=600)


def _backend(items: list[str]) -> str:
    """Which backend a train / compare command line uses, decided as visionpeft's recipe loader decides it."""
    from visionpeft.packaged import find_recipe
    from visionpeft.recipe.flat import is_ultralytics_model, split_cli
    from visionpeft.safe_yaml import load_yaml_file

    recipe, flat = split_cli(items)
    doc = load_yaml_file(find_recipe(recipe)) if recipe else {}
    values = {**doc, **dict(i.split("=", 1) for i in flat)}
    task = values.get("task")
    ultralytics = task != "classification" if task else is_ultralytics_model(str(values.get("model", "")))
    return "ultralytics" if ultralytics else "timm"


@pytest.fixture(scope="module")
def world(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("readme"), shared)


# ---------------------------------------------------------------------------------------------- asserts
def assert_one_line_error(proc: subprocess.CompletedProcess[str], names: tuple[str, ...], where: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("visionpeft: error:")]
    shown = f"{where}\nexit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stderr, shown
    assert len(lines) == 1, shown
    for name in names:
        assert name in lines[0], f"{where}: the error line does not name {name!r}: {lines[0]}"


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("cmd", "mode", "variant"), cases())
def test_readme(cmd: Command, mode: str, variant: tuple[str | None, str | None] | None, world: World) -> None:
    if cmd.kind == "unknown":
        pytest.fail(f"{cmd}")
    if mode == "ci":
        ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
        for part in cmd.text.split("&&"):
            part = " ".join(part.split()).replace(". .venv/bin/activate", "activate")
            assert part.split(" ")[0] in ("activate",) or part in ci, (
                f"{cmd}: left to .ci/run ({CI_RUNS[cmd.text]}), but .ci/run does not run {part!r}")
        return
    if cmd.kind == "python":
        _python_block(cmd, mode, world)
        return
    text, run = variant
    where = f"{cmd} [{mode}{', ' + run if run else ''}]"
    if text.startswith("torchrun"):
        assert TORCHRUN.match(text), f"{where}: not the documented DDP form {TORCHRUN.pattern}"
        assert (REPO / "visionpeft" / "tasks" / "distributed.py").is_file()
        return
    proc, _made = world.run_shell(world.substitute(text, run), "local" if mode == "local" else "bare")
    while mode == "local" and proc.returncode == 2 and text.startswith("visionpeft predict"):
        # an option of the other kind of run ([conf=] Ultralytics, [topk=] classification): refused in one line
        refused = re.search(r"predict: (\w+)= applies to", proc.stderr)
        if refused is None or f" {refused.group(1)}=" not in text:
            break
        text = re.sub(rf" {refused.group(1)}=\S+", "", text)
        proc, _made = world.run_shell(world.substitute(text, run), "local")
    if (cmd.text, run) in EXPECTED_ERRORS:
        assert_one_line_error(proc, EXPECTED_ERRORS[cmd.text, run][:1], where)
        return
    if mode == "offline":
        names = tuple(n for names, _extra in _online(cmd.text)[:1] for n in names)
        assert_one_line_error(proc, names, where)
        return
    assert proc.returncode == 0, f"{where}\nexit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, f"{where}\n{proc.stderr[-4000:]}"


def _python_block(cmd: Command, mode: str, world: World) -> None:
    code = cmd.text
    first = _strip_comment(code.strip().splitlines()[0])
    context = textwrap.dedent(PY_CONTEXT.get(first, ""))
    if mode == "local":
        for old, new in PY_SHORT.items():
            code = code.replace(old, new)
    world_name = "local" if mode == "local" else "bare"
    proc = world.run_python(context + code, world_name, f"block_{cmd.line}_{mode}")
    where = f"{cmd} [{mode}]\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-4000:]}"
    if mode == "offline":  # Ultralytics' own YOLO("yolo11n.pt"): its download error, naming the file
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and "yolo11n.pt" in last, where
        return
    assert proc.returncode == 0, where
    if "merged.pt loads with YOLO() alone" in cmd.text:  # the block's own promise
        merged = sorted((world.work / "runs" / "detect").glob("train*/weights/merged.pt"))
        assert merged, f"{where}\nno runs/detect/train*/weights/merged.pt"
        check = world.run_python(f"from ultralytics import YOLO\nYOLO({str(merged[-1])!r})\n", "local", "merged")
        assert check.returncode == 0, check.stderr[-3000:]

