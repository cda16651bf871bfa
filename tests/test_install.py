"""Installed the way users install: the repository itself, cloned into a webui's ``extensions/`` or ComfyUI's
``custom_nodes/``, and the Comfy Registry zip (``tools/build_comfy_registry_zip.py``).

The clones are ``git clone``s of this repository's current HEAD (commit first: uncommitted changes are not in
them). "Not installed" runs in a Python started with ``-S`` and only site-packages on ``PYTHONPATH``: the
packages are there, but no ``.pth`` file runs, so no editable install of zigzag-kdiff is visible. ComfyUI loads
the packs with its own loader (``nodes.load_custom_node``) in the real core. A webui cannot run here: its side is
checked through the files the webui executes (``install.py``, ``scripts/*.py``) and the library resolution they use.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import types
import zipfile
from pathlib import Path

import pytest
from comfyui_harness import comfyui_dir

ROOT = Path(__file__).resolve().parents[1]
WEBUI_EXTENSION = ROOT / "extensions" / "sd-webui-zigzag"
SITE_PACKAGES = sysconfig.get_path("purelib")


def _load(path: Path, name: str | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checkout = _load(WEBUI_EXTENSION / "zigzag_checkout.py", "zigzag_checkout_under_test")
registry = _load(ROOT / "tools" / "build_comfy_registry_zip.py", "build_comfy_registry_zip")


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def head_clone(tmp_path_factory):
    """A function ``clone(dest)``: a ``git clone`` of this repository at its current HEAD."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = _git("rev-parse", "HEAD").strip()

    def clone(dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dest)], check=True)
        _git("checkout", "-q", head, cwd=dest)
        return dest

    return clone


def _python(
    code: str, *args: str, cwd: Path, path: tuple[str, ...] = (), site: bool = True
) -> subprocess.CompletedProcess:
    """``python -S -c code`` with ``path`` and (``site``) site-packages, without its .pth files, on PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([*path, *([SITE_PACKAGES] if site else [])])
    command = [sys.executable, "-S", "-c", code, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _fake_installed(site: Path, version: str = "9.9.9") -> Path:
    """A folder with a bare ``zigzag_kdiff`` package of another version: an "installed" copy."""
    (site / "zigzag_kdiff").mkdir(parents=True)
    (site / "zigzag_kdiff" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    return site


# --- the webui side -----------------------------------------------------------------------------------------------


def test_root_scripts_folder_holds_only_the_webui_glue():
    """The webui executes every root ``scripts/*.py``: only the two thin loaders of the extension's glue scripts."""
    root_scripts = sorted(_git("ls-files", "scripts").split())
    glue = sorted(path.name for path in (WEBUI_EXTENSION / "scripts").glob("*.py"))
    assert root_scripts == [f"scripts/{name}" for name in glue] == ["scripts/seg.py", "scripts/zigzag.py"]
    loaders = {(ROOT / path).read_bytes() for path in root_scripts}
    assert len(loaders) == 1, "the root glue files are one loader (it takes the name of its own file)"
    tree = ast.parse(loaders.pop())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"importlib.util", "os"}, "standard library only: no webui module, no library import"


def test_root_glue_runs_the_extension_script_of_its_name(tmp_path):
    """Loaded as ``modules.script_loading.load_module`` does (a module named after the file, the extension root first
    on sys.path), the root glue executes ``extensions/sd-webui-zigzag/scripts/<its name>`` and exposes only the
    classes defined there (the webui registers the ``scripts.Script`` subclasses it finds)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "zigzag.py", tmp_path / "scripts" / "zigzag.py")
    inner = tmp_path / "extensions" / "sd-webui-zigzag" / "scripts"
    inner.mkdir(parents=True)
    (inner / "zigzag.py").write_text(
        "import os, sys\nfrom collections import OrderedDict\nSEEN_PATH = sys.path[0]\n"
        "class ZigzagInfotext(OrderedDict):\n    pass\n"
    )
    saved = list(sys.path)
    sys.path[:] = [str(tmp_path), *saved]
    try:
        module = _load(tmp_path / "scripts" / "zigzag.py", "zigzag.py")
    finally:
        sys.path[:] = saved
    assert module.ZigzagInfotext.__module__ == "zigzag.py" and module._glue.SEEN_PATH == str(tmp_path)
    assert module._glue.__file__ == str(inner / "zigzag.py")
    assert "OrderedDict" not in vars(module) and "SEEN_PATH" not in vars(module)


RESOLVE = """
import sys
checkout_file, extension_dir, root = sys.argv[1:4]
sys.path.insert(0, root)  # the webui puts the extension's root first while it loads its scripts
import importlib.util
spec = importlib.util.spec_from_file_location("zigzag_checkout", checkout_file)
checkout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checkout)
lines = []
module = checkout.import_library(extension_dir, log=lines.append)
assert checkout.import_library(extension_dir, log=lines.append) is module  # the second glue script: no new line
assert sys.path.count(root) == 1, "the library is imported without adding the checkout to sys.path"
print(module.__file__)
print(*lines, sep="\\n")
"""


def test_clone_as_webui_extension_uses_its_own_library_or_an_installed_one(head_clone, tmp_path):
    """Install from URL: the clone is ``extensions/zigzag-kdiff``; its glue imports the clone's ``zigzag_kdiff`` when
    none is installed (also through a symlinked ``extensions/sd-webui-zigzag``), an installed one when there is one,
    and logs which."""
    clone = head_clone(tmp_path / "webui" / "extensions" / "zigzag-kdiff")
    extension = clone / "extensions" / "sd-webui-zigzag"
    link = tmp_path / "webui" / "extensions" / "sd-webui-zigzag"
    link.symlink_to(extension, target_is_directory=True)

    for extension_dir, ext_root in ((extension, clone), (link, link)):
        result = _python(
            RESOLVE, str(extension / "zigzag_checkout.py"), str(extension_dir), str(ext_root), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        library, line = result.stdout.splitlines()
        assert Path(library) == clone / "zigzag_kdiff" / "__init__.py"
        version = checkout.checkout_version(str(clone))
        assert line == f"[Zigzag] zigzag_kdiff {version} from this checkout ({clone / 'zigzag_kdiff'})"

    site = _fake_installed(tmp_path / "site")
    result = _python(
        RESOLVE, str(extension / "zigzag_checkout.py"), str(extension), str(clone), cwd=tmp_path, path=(str(site),)
    )
    assert result.returncode == 0, result.stderr
    library, line = result.stdout.splitlines()
    assert Path(library) == site / "zigzag_kdiff" / "__init__.py"
    version = checkout.checkout_version(str(clone))
    assert line == (
        f"[Zigzag] zigzag_kdiff 9.9.9 installed at {site / 'zigzag_kdiff'}; this checkout has {version} "
        "(pip uninstall zigzag-kdiff to use it)"
    )


def test_clone_install_py_installs_nothing_and_speaks_only_when_needed(head_clone, tmp_path):
    """``install.py`` at the clone's root, run as the webui runs it (cwd: the webui) and as ComfyUI Manager runs it
    (cwd: the clone): silent with the clone's library, one line for an installed copy of another version; the
    clone's tracked tree is unchanged and nothing is installed."""
    clone = head_clone(tmp_path / "extensions" / "zigzag-kdiff")
    run_install = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
    for cwd in (tmp_path, clone):
        result = _python(run_install, str(clone / "install.py"), cwd=cwd)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    site = _fake_installed(tmp_path / "site")
    result = _python(run_install, str(clone / "install.py"), cwd=clone, path=(str(site),))
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == (
        f"[Zigzag] the installed zigzag_kdiff 9.9.9 at {site / 'zigzag_kdiff'} is used, not this checkout's "
        f"{checkout.checkout_version(str(clone))}: 'pip uninstall zigzag-kdiff' in the webui's Python to use the "
        "checkout's.\n"
    )
    assert _git("status", "--porcelain", cwd=clone) == ""
    sources = [WEBUI_EXTENSION / "install.py", WEBUI_EXTENSION / "zigzag_checkout.py", ROOT / "install.py"]
    for source in sources:  # no pip, no subprocess, no network
        tree = ast.parse(source.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"subprocess", "pip", "urllib.request", "launch"}, (source, imported)


def test_install_report_without_any_library(tmp_path):
    """A copy of the extension folder outside a checkout, in a Python without the package (nor site-packages):
    install.py needs only the standard library and prints one line saying what to do."""
    copied = tmp_path / "extensions" / "sd-webui-zigzag"
    shutil.copytree(WEBUI_EXTENSION, copied, ignore=shutil.ignore_patterns("__pycache__"))
    run_install = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
    result = _python(run_install, str(copied / "install.py"), cwd=tmp_path, site=False)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == (
        "[Zigzag] zigzag_kdiff not found: this folder is not inside a zigzag-kdiff checkout and the package is "
        "not installed; install the extension from the repository URL, or 'pip install zigzag-kdiff'.\n"
    )


def test_root_metadata_ini_is_the_extension_one():
    import configparser

    def read(path: Path) -> dict:
        parser = configparser.ConfigParser()
        assert parser.read(path)
        return {section: dict(parser[section]) for section in parser.sections()}

    assert (
        read(ROOT / "metadata.ini")
        == read(WEBUI_EXTENSION / "metadata.ini")
        == {"Extension": {"name": "zigzag-kdiff", "version": checkout.checkout_version(str(ROOT))}}
    )


# --- ComfyUI --------------------------------------------------------------------------------------------------------

LOAD_PACKS = """
import asyncio, importlib.util, json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
comfy_dir, *packs = sys.argv[1:]
assert importlib.util.find_spec("zigzag_kdiff") is None, "zigzag_kdiff is installed"
sys.path.insert(0, comfy_dir)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.k_diffusion.sampling, comfy.model_management, comfy.samplers, nodes
from comfy_config import config_parser
results, start_path = [], list(sys.path)
for pack in packs:
    for name in [name for name in sys.modules if name.split(".")[0] == "zigzag_kdiff"]:
        del sys.modules[name]  # each pack imports its own copy, as in a fresh ComfyUI
    loaded = asyncio.run(nodes.load_custom_node(pack))
    config = config_parser.extract_node_configuration(pack)
    results.append({
        "loaded": loaded,
        "nodes": {k: v.RELATIVE_PYTHON_MODULE for k, v in nodes.NODE_CLASS_MAPPINGS.items()
                  if getattr(v, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes.")},
        "ksampler": [name for name in comfy.samplers.KSampler.SAMPLERS if name.startswith("zigzag")],
        "sampler_file": comfy.k_diffusion.sampling.sample_zigzag_euler.__code__.co_filename,
        "library": sys.modules["zigzag_kdiff"].__file__,
        "sys_path": sys.path == start_path,
        "project": [config.project.name, config.project.version, config.project.dependencies],
        "publisher": config.tool_comfy.publisher_id,
    })
print(json.dumps(results))
"""

PACK_NODES = {
    "ZigzagSampler",
    "ZigzagGuidanceInterval",
    "ZigzagGuidanceIntervalSigmas",
    "ZigzagSmoothedEnergyGuidance",
    "ZigzagSmoothedEnergyGuidanceSigmas",
}


def test_clone_and_registry_zip_load_in_comfyui(head_clone, tmp_path):
    """Manager's Install via Git URL (a clone in ``custom_nodes/``) and the registry zip unzipped into a fresh
    ``custom_nodes/``, each loaded by ComfyUI's own loader with no zigzag-kdiff installed: the nodes and the KSampler
    entries are registered, and each uses the library inside it."""
    core = comfyui_dir()
    if core is None:
        if os.environ.get("ZIGZAG_REQUIRE_COMFYUI"):
            pytest.fail("ZIGZAG_REQUIRE_COMFYUI is set but the ComfyUI core is not installed")
        pytest.skip("ComfyUI core not installed: bash tools/install-dev.sh")
    clone = head_clone(tmp_path / "ComfyUI" / "custom_nodes" / "zigzag-kdiff")
    archive = registry.build_zip(tmp_path / "dist", root=clone)
    unzipped = tmp_path / "ComfyUI2" / "custom_nodes" / "zigzag-sampling"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(unzipped)

    result = _python(LOAD_PACKS, str(core), str(clone), str(unzipped), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from_clone, from_zip = json.loads(result.stdout.splitlines()[-1])
    version = checkout.checkout_version(str(clone))
    for pack, loaded in ((clone, from_clone), (unzipped, from_zip)):
        assert loaded["loaded"] is True
        assert loaded["nodes"] == {node: f"custom_nodes.{pack.name}" for node in PACK_NODES}
        assert loaded["ksampler"] == ["zigzag_euler", "zigzag_ddim", "zigzag_dpmpp_2m"]
        assert Path(loaded["sampler_file"]).is_relative_to(pack / "extensions" / "comfyui_zigzag")
        assert Path(loaded["library"]) == pack / "zigzag_kdiff" / "__init__.py"
        assert loaded["sys_path"], "the repository root is not put on sys.path"
        assert f"[Zigzag] zigzag_kdiff {version} from this repository ({pack / 'zigzag_kdiff'})" in result.stderr
    # the zip's pyproject is the registry's: name, version, PyPI-only dependencies (the library is inside)
    name, zip_version, dependencies = from_zip["project"]
    assert (name, zip_version) == ("comfyui-zigzag", version) and from_zip["publisher"] == "zigzag-kdiff"
    assert dependencies == ["torch>=2.0", "tqdm"] and not any("zigzag" in dep for dep in dependencies)
    assert (unzipped / "requirements.txt").read_text() == "torch>=2.0\ntqdm\n"
    assert from_clone["project"][0] == "", "the clone's root pyproject.toml is the library's build file"


def test_registry_zip_holds_the_pack_and_the_library_only(tmp_path):
    names = set(registry.registry_files(ROOT))
    assert {"__init__.py", "pyproject.toml", "requirements.txt", "extensions/comfyui_zigzag/__init__.py"} <= names
    assert "zigzag_kdiff/models_data/shapes16/unet/diffusion_pytorch_model.safetensors" in names
    assert any(name.startswith("example_workflows/") and name.endswith(".json") for name in names)
    tops = {name.split("/")[0] for name in names}
    assert tops == {
        "__init__.py",
        "pyproject.toml",
        "requirements.txt",
        "example_workflows",
        "extensions",
        "zigzag_kdiff",
    }
    assert not any(
        name.startswith(("extensions/sd-webui-zigzag", "scripts/")) or "__pycache__" in name for name in names
    )
    first = registry.build_zip(tmp_path / "a").read_bytes()
    assert registry.build_zip(tmp_path / "b").read_bytes() == first, "one tree, one zip"


def test_install_requires_match_the_pack_dependencies():
    setup = (ROOT / "setup.cfg").read_text()
    requires = setup.split("install_requires =")[1].split("\n\n")[0].split()
    assert registry.pack_metadata(registry.pack_pyproject())[2] == requires


ROOT_INIT_ELSEWHERE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("zigzag_repository_root", sys.argv[1], submodule_search_locations=[])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
public = sorted(name for name in vars(module) if not name.startswith("__"))
print(public, "torch" in sys.modules, "zigzag_kdiff" in sys.modules)
"""


def test_root_init_does_nothing_outside_comfyui(tmp_path):
    """Imported without a ComfyUI core (pytest, setuptools, a webui): no pack, no library, no output."""
    result = _python(ROOT_INIT_ELSEWHERE, str(ROOT / "__init__.py"), cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == "['_EXPORTS', 'importlib', 'os', 'sys'] False False\n"


INDEX_TAGS = {
    *["script", "localization", "tab", "dropdown", "ads", "installed", "training", "models", "UI related"],
    *["prompting", "editing", "manipulations", "online", "animation", "query", "science", "extras"],
}
"""The tags of the A1111 extension index (AUTOMATIC1111/stable-diffusion-webui-extensions, tags.json)."""


def test_extension_index_entry_in_the_docs():
    page = (ROOT / "docs" / "a1111-forge.md").read_text(encoding="utf-8")
    block = page.split("### Extension index entry")[1].split("```json\n")[1].split("```")[0]
    entry = json.loads(block)
    assert set(entry) == {"name", "url", "description", "tags"}
    assert set(entry["tags"]) <= INDEX_TAGS and entry["tags"]
    repository = registry.pack_pyproject().split("Repository = ")[1].split("\n")[0].strip('"')
    assert entry["url"] == repository and f"`{repository}`" in (ROOT / "README.md").read_text(encoding="utf-8")


PACK_LOCATE = """
import importlib.util, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
spec = importlib.util.spec_from_file_location("pack_locate", sys.argv[1])
locate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locate)
print(locate.import_zigzag_kdiff().__file__)
"""


def test_comfyui_pack_prefers_an_installed_library_and_says_so(head_clone, tmp_path):
    clone = head_clone(tmp_path / "custom_nodes" / "zigzag-kdiff")
    site = _fake_installed(tmp_path / "site")
    locate = clone / "extensions" / "comfyui_zigzag" / "locate.py"
    result = _python(PACK_LOCATE, str(locate), cwd=tmp_path, path=(str(site),), site=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"[Zigzag] zigzag_kdiff 9.9.9 installed at {site / 'zigzag_kdiff'}",
        str(site / "zigzag_kdiff" / "__init__.py"),
    ]
