"""Every documented example and command runs with exactly the extras its section installs (an import graph).

A fresh virtual environment per extra is too slow for CI, so this reads the code instead: the import
statements of an example (a README/docs ``python`` block, a ``zigzag-kdiff`` command, a ``python file.py``
command) and, transitively, of every ``zigzag_kdiff`` module it reaches, function-level imports included
(a function an example calls imports them), imports guarded by ``except ImportError`` excluded. Each
third-party top-level module must belong to a distribution that the core requirements plus the extras
named in the example's section (``pip install -e ".[diffusers]"``, ``zigzag-kdiff[bench]``) provide,
following the installed distributions' own requirements from setup.cfg's ``[options.extras_require]``.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import shlex
import sys
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from zigzag_kdiff.cli import COMMAND_EXTRAS, EXTRAS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NAMED_EXTRAS = re.compile(r"""(?:\.|zigzag-kdiff)\[([\w,\s-]+)\]""")

# The modules each command's code starts from (what zigzag_kdiff/cli.py imports for it).
COMMAND_MODULES = {
    "compare": ("zigzag_kdiff.compare", "zigzag_kdiff.diffusers"),
    "bench cost": ("zigzag_kdiff.bench.common",),
    "bench gmm": ("zigzag_kdiff.bench.gmm",),
    "bench shapes": ("zigzag_kdiff.bench.shapes",),
    "bench convergence": ("zigzag_kdiff.bench.convergence",),
    "bench shapes-dpmpp": ("zigzag_kdiff.bench.convergence",),
    "bench device": ("zigzag_kdiff.bench.device",),
    "replicate": ("zigzag_kdiff.bench.replicate",),
}


# --- what the extras provide ------------------------------------------------------------------------------------


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def declared_extras() -> dict[str, list[str]]:
    config = _setup_cfg()
    return {name: _lines(value) for name, value in config["options.extras_require"].items()}


@cache
def provided(extras: frozenset[str]) -> frozenset[str]:
    """Distributions (canonical names) installed by ``pip install zigzag-kdiff[extras]``: the requirements'
    closure over the installed distributions' metadata."""
    ours = declared_extras()
    pending = [Requirement(r) for r in _lines(_setup_cfg()["options"]["install_requires"])]
    pending += [Requirement(r) for extra in extras for r in ours[extra]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name == "zigzag-kdiff":
            pending += [Requirement(r) for extra in requirement.extras for r in ours[extra]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            active = [""] + sorted(requirement.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in active):
                pending.append(sub)
    return frozenset(seen)


@cache
def distributions_of(module: str) -> frozenset[str]:
    return frozenset(canonicalize_name(d) for d in importlib.metadata.packages_distributions().get(module, []))


# --- what the code imports ----------------------------------------------------------------------------------------


def _guarded(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return False
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(ast.unparse(t) in {"ImportError", "ModuleNotFoundError"} for t in types)


def _imports(tree: ast.AST, package: str) -> list[tuple[str, bool]]:
    """``(absolute name, inside a function)`` for every import in ``tree`` (``package``: for relative imports),
    except optional ones (guarded by ``except ImportError``, or under ``if TYPE_CHECKING``)."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Try) and any(_guarded(h) for h in node.handlers):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, in_function)
            return  # the try body's imports are optional
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.append((base, in_function))
            found.extend((f"{base}.{alias.name}", in_function) for alias in node.names)  # submodules, if they are
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


@cache
def _file_imports(path: Path, package: str) -> list[tuple[str, bool]]:
    return _imports(ast.parse(path.read_text(encoding="utf-8")), package)


def _module_file(name: str, local: Path | None) -> tuple[Path, bool] | None:
    for base in (ROOT, local) if local is not None else (ROOT,):
        path = base.joinpath(*name.split("."))
        if (path / "__init__.py").is_file():
            return path / "__init__.py", True
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py"), False
    return None


# Function-level imports the graph leaves out, each with the reason no documented example or command runs it.
NOT_REACHED = {
    ("zigzag_kdiff.kdiffusion", "k_diffusion.sampling"): "register_k_diffusion() without a module imports "
    "k-diffusion; every example that calls it so imports k_diffusion itself, and no command calls it",
}


def third_party_imports(code: str, start: tuple[str, ...] = (), local: Path | None = None) -> set[str]:
    """Top-level third-party modules that ``code`` (and the ``start`` modules) import, through zigzag_kdiff (and
    the modules next to a script, ``local``). Every zigzag_kdiff module reached counts with all its imports,
    function-level ones included (conservative: a function that is called imports them), except
    :data:`NOT_REACHED`."""
    outside: set[str] = set()
    queue = [name for name, _ in _imports(ast.parse(code), "__main__")] + list(start)
    done: set[str] = set()
    while queue:
        name = queue.pop()
        if name in done or not name or name.startswith("__main__"):
            continue
        done.add(name)
        top = name.split(".")[0]
        found = _module_file(name, local)
        if found is None:
            if top != "zigzag_kdiff" and top not in sys.stdlib_module_names and _module_file(top, local) is None:
                outside.add(top)
            continue  # a third-party module, or `from zigzag_kdiff.x import function`
        path, is_package = found
        queue += [".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)]  # parent packages run first
        package = name if is_package else name.rpartition(".")[0]
        for imported, in_function in _file_imports(path, package):
            if not (in_function and (name, imported) in NOT_REACHED):
                queue.append(imported)
    return outside


def uncovered(modules: set[str], extras: set[str]) -> list[str]:
    """The modules of ``modules`` no distribution installed by ``extras`` provides."""
    have = provided(frozenset(extras))
    return sorted(m for m in modules if not distributions_of(m) & have)


# --- where the examples are, and which extras their sections name ----------------------------------------------------


def _sections(page: Path) -> list[tuple[str, str, set[str]]]:
    """``(heading, text, extras)`` for the page's intro and each level-2 section; ``extras`` are those it names,
    or, where it names none, the intro's."""
    text = page.read_text(encoding="utf-8")
    parts = re.split(r"^(?=## )", text, flags=re.M)
    named = [{e.strip() for m in NAMED_EXTRAS.findall(part) for e in m.split(",")} for part in parts]
    return [(part.splitlines()[0], part, extras or named[0]) for part, extras in zip(parts, named)]


def _examples() -> list[tuple[str, str, tuple[str, ...], set[str], Path | None]]:
    """``(where, code, start modules, extras, the script's folder)`` for every python block, ``zigzag-kdiff``
    command and ``python x.py`` command."""
    found = []
    for page in PAGES:
        for heading, text, extras in _sections(page):
            where = f"{page.relative_to(ROOT)} {heading.strip('# ')[:50]}"
            blocks = FENCE.findall(text)
            for language, code in blocks:
                if language == "python":
                    found.append((f"{where} (python)", code, (), extras, None))
            commands = [line for language, code in blocks if language == "bash" for line in code.splitlines()]
            commands += re.findall(r"`([^`\n]*(?:zigzag-kdiff|python) [^`\n]+)`", FENCE.sub("", text))
            for line in commands:
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                try:
                    words = shlex.split(line)
                except ValueError:
                    continue
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]
                if words[:1] == ["zigzag-kdiff"] and len(words) > 1:
                    command = " ".join(words[1:3]) if words[1] == "bench" and len(words) > 2 else words[1]
                    if command in COMMAND_EXTRAS:
                        found.append((f"{where}: {line}", "", COMMAND_MODULES[command], extras, None))
                elif words[:1] == ["python"] and len(words) > 1 and words[1].endswith(".py"):
                    script = ROOT / words[1]
                    # a test file run as a script (the parity tables) runs in the development install
                    needs = extras | {"test"} if script.parent == ROOT / "tests" else extras
                    if script.is_file():
                        found.append((f"{where}: {line}", script.read_text(encoding="utf-8"), (), needs, script.parent))
    return found


EXAMPLES = _examples()


def test_the_examples_are_found():
    kinds = {"(python)": 0, "zigzag-kdiff": 0, "python ": 0}
    for where, *_ in EXAMPLES:
        for kind in kinds:
            kinds[kind] += kind in where
    assert kinds["(python)"] >= 6 and kinds["zigzag-kdiff"] >= 10, kinds
    assert set(declared_extras()) >= set(EXTRAS), "cli.EXTRAS names an extra setup.cfg lacks"


@pytest.mark.parametrize("where, code, start, extras, local", EXAMPLES, ids=[e[0][:90] for e in EXAMPLES])
def test_each_example_runs_with_the_extras_its_section_installs(where, code, start, extras, local):
    missing = uncovered(third_party_imports(code, start, local), extras)
    assert not missing, f"{where}: imports {missing}, which {sorted(extras) or 'the core install'} does not provide"


@pytest.mark.parametrize("command", sorted(COMMAND_EXTRAS))
def test_each_command_declares_the_extras_its_code_needs(command):
    """``cli.COMMAND_EXTRAS`` (what the CLI checks before running, naming the extra to install) covers the imports
    of the command's code, and each of its modules provides the modules ``cli.EXTRAS`` lists for it."""
    cli_source = (ROOT / "zigzag_kdiff" / "cli.py").read_text(encoding="utf-8")
    for module in COMMAND_MODULES[command]:
        relative = module.removeprefix("zigzag_kdiff.").rpartition(".")
        assert re.search(rf"from \.{re.escape(relative[0])}\s+import[^\n]*\b{relative[2]}\b", cli_source) or re.search(
            rf"from \.{re.escape(module.removeprefix('zigzag_kdiff.'))} import", cli_source
        ), f"cli.py does not import {module} for {command}"
    missing = uncovered(third_party_imports("", COMMAND_MODULES[command]), set(COMMAND_EXTRAS[command]))
    assert not missing, f"{command} imports {missing}; cli.COMMAND_EXTRAS[{command!r}] does not provide them"
    for extra in COMMAND_EXTRAS[command]:
        assert not uncovered(set(EXTRAS[extra]), {extra}), extra


def test_the_graph_sees_function_level_imports_and_skips_optional_ones():
    """The check can fail: the k-diffusion example's tiny UNet imports diffusers inside ``tiny_unet``, which the
    k-diffusion extra alone does not install; compare's matplotlib font lookup is optional."""
    code = "from zigzag_kdiff.models import UNetEps, tiny_unet\nimport k_diffusion as K\n"
    assert uncovered(third_party_imports(code), {"kdiffusion"}) == ["diffusers"]
    assert uncovered(third_party_imports(code), {"diffusers"}) == []
    assert "matplotlib" not in third_party_imports("", ("zigzag_kdiff.compare",))
    assert "matplotlib" in uncovered(third_party_imports("", ("zigzag_kdiff.bench.gmm",)), {"diffusers"})
    assert third_party_imports("import zigzag_kdiff") == {"torch", "tqdm"}  # the core install
