"""The ``zigzag-kdiff`` command as a first-time user meets it: --help, mistyped inputs, names, folders, noise."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from zigzag_kdiff.cli import COMMAND_EXTRAS, DEFAULT_PROMPTS, OTHER_DEFAULT_PROMPTS, main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = [[], ["bench"], ["compare"], ["replicate"]]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "top")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_help_prints(command, flag, capsys):
    assert main([*command, flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: zigzag-kdiff") and "options:" in out


def test_compare_help_lists_every_model_name_and_the_real_default_prompts(capsys):
    from zigzag_kdiff.diffusers import BUNDLED_MODELS, TINY_MODELS

    main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in [*BUNDLED_MODELS, *TINY_MODELS]:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name
    for prompt in DEFAULT_PROMPTS["shapes"] + OTHER_DEFAULT_PROMPTS:
        assert prompt in text, prompt
    assert "a released one" not in text


def _no_cuda_device() -> str:
    """A device this machine does not have: cuda without a GPU, else an index past the last GPU."""
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


# (arguments, the flag the one-line message must name); files are made in the test's folder (see `files`)
MISTYPED = [
    (["compare", "--model", "not-a-model"], "--model"),  # an existing folder without model_index.json
    (["compare", "--model", "corrupt.safetensors"], "--model"),
    (["compare", "--model", "truncated.safetensors"], "--model"),
    (["compare", "--model", "model.ckpt"], "--model"),
    (["compare", "--model", "nosuch"], "--model"),
    (["compare", "--model", "tiny", "--model-config", "not-a-model"], "--model-config"),
    (["compare", "--device", _no_cuda_device()], "--device"),
    (["compare", "--device", "gpu"], "--device"),
    (["bench", "cost", "--repeats", "0"], "--repeats"),
    (["bench", "shapes", "--quick", "--seeds", "0"], "--seeds"),
    (["bench", "cost", "--steps", "0"], "--steps"),
    (["bench", "shapes", "--threads", "0"], "--threads"),
    (["bench", "shapes-dpmpp", "--threads", "-2"], "--threads"),
    (["compare", "--threads", "0"], "--threads"),
    (["compare", "--seeds", "-1"], "--seeds"),
    (["compare", "--seeds", str(2**64)], "--seeds"),
    (["compare", "--seeds", "0", "0"], "--seeds"),
    (["compare", "--seeds", "one"], "--seeds"),
    (["bench", "gmm", "--first-seed", "-1"], "--first-seed"),
    (["compare", "--height", "0"], "--height"),
    (["compare", "--width", "-16"], "--width"),
    (["compare", "--model", "tiny", "--height", "60"], "--height"),  # not a multiple of the VAE's 8
    (["compare", "--steps", "0"], "--steps"),
    (["compare", "--steps", "4", "--zigzag-steps", "4"], "--zigzag-steps"),
    (["compare", "--zigzag-rounds", "-1"], "--zigzag-rounds"),
    (["compare", "--cfg", "3", "--inversion-scale", "4"], "--inversion-scale"),
    (["compare", "--cfg", "nan"], "--cfg"),
    (["compare", "--model", "tiny-sd3", "--inversion-scale", "8", "--steps", "1"], "--inversion-scale"),  # γ₁ = 7
    (["compare", "--model", "tiny-flux", "--distilled-guidance", "nan"], "--distilled-guidance"),
    (["compare", "--model", "tiny-flux", "--inversion-guidance", "inf"], "--inversion-guidance"),
    (
        ["compare", "--model", "tiny-flux", "--distilled-guidance", "2", "--inversion-guidance", "3"],
        "--inversion-guidance",
    ),
    (
        ["compare", "--model", "tiny-flux", "--inversion-guidance", "4", "--steps", "1"],
        "--inversion-guidance",
    ),  # g₁ 3.5
    (["compare", "--distilled-guidance", "3"], "--distilled-guidance"),  # shapes: a UNet, no guidance embeds
    (["compare", "--model", "tiny-sd3", "--inversion-guidance", "1"], "--inversion-guidance"),
    (["compare", "--model", "tiny-flux-schnell", "--distilled-guidance", "3"], "--distilled-guidance"),
    (["compare", "--model", "tiny-flux", "--ddim-update", "released", "--steps", "1"], "--ddim-update"),  # VP only
    (["compare", "--guidance-interval", "5", "1"], "--guidance-interval"),
    (["compare", "--guidance-interval", "-1", "1"], "--guidance-interval"),
    (["compare", "--methods", "euler,heun"], "--methods"),
    (["compare", "--schedule", "linear"], "--schedule"),
    (["compare", "--seg-scale", "-1"], "--seg-scale"),
    (["compare", "--seg-blur-sigma", "0"], "--seg-blur-sigma"),
    (["compare", "--methods", "seg_euler", "--seg-layers", "sideways"], "--seg-layers"),
    (["compare", "--model", "tiny", "--methods", "seg_euler", "--seg-layers", "u9", "--steps", "1"], "--seg-layers"),
    (["compare", "--out", "a-file.txt"], "--out"),
    (["bench", "shapes", "--from-json", "nosuch.json"], "--from-json"),
    (["bench", "shapes", "--model", "not-a-model", "--quick"], "--model"),
    (["bench", "gmm", "--out", "a-file.txt"], "--out"),
    (["bench", "fast"], "BENCHMARK"),
    (["bench", "shapes-dpmpp", "--from-json", str(ROOT / "results" / "shapes" / "shapes.json")], "--from-json"),
    (["bench", "shapes", "--from-json", str(ROOT / "results" / "convergence" / "shapes_dpmpp.json")], "--from-json"),
    (["bench", "shapes", "--from-json", "a-file.txt"], "--from-json"),
    (["replicate", "nosuch.json", "nosuch.json"], "reference"),
    (["replicate", "a-file.txt", "a-file.txt"], "reference"),
    (["replicate", "--worst", "-1", "a", "b"], "--worst"),
    (["compare", "--dtype", "float64"], "--dtype"),
]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "truncated.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 8)
    (tmp_path / "model.ckpt").write_bytes(b"never unpickled")
    (tmp_path / "a-file.txt").write_text("not a folder, not JSON")
    return tmp_path


@pytest.mark.parametrize("argv, flag", MISTYPED, ids=[" ".join(a) for a, _ in MISTYPED])
def test_a_mistyped_input_ends_with_one_line_that_names_the_flag(files, capsys, argv, flag):
    """rc ≠ 0, no traceback, one line naming the flag, nothing written: before any model is loaded (or, for what
    only the model knows, its size factor and layers, before the first image)."""
    out = "out-folder"
    if argv[0] == "compare":  # --quiet: no progress bar above an error found at the first image
        argv = [*argv, "--quiet"] + (["--out", out] if "--out" not in argv else [])
    rc = main(argv)
    error = capsys.readouterr().err
    assert rc == 2, error
    assert "Traceback" not in error and error.count("\n") == 1, error
    assert error.startswith(f"zigzag-kdiff {argv[0]}: error: ") and flag in error, error
    assert not (files / out).exists()


def test_the_seed_range_is_the_webuis(capsys):
    from zigzag_kdiff.cli import seed

    assert seed("0") == 0 and seed(str(2**64 - 1)) == 2**64 - 1
    for bad in ("-1", str(2**64), "1.5"):
        with pytest.raises(Exception, match=r"0, 18446744073709551615"):
            seed(bad)


def test_a_missing_optional_dependency_names_the_extra_to_install(monkeypatch, capsys):
    """sys.modules[name] = None is how Python itself spells "not importable": find_spec returns None, import fails."""
    monkeypatch.setitem(sys.modules, "diffusers", None)
    assert main(["compare", "--steps", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        'zigzag-kdiff compare: error: compare needs diffusers: pip install "zigzag-kdiff[diffusers]"'
    )
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "gmm", "--quick"]) == 2
    assert 'bench gmm needs matplotlib: pip install "zigzag-kdiff[bench]"' in capsys.readouterr().err
    assert COMMAND_EXTRAS["replicate"] == ()


def test_an_import_error_inside_a_command_names_the_extra_too(monkeypatch):
    from zigzag_kdiff.cli import _missing_extra

    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(ModuleNotFoundError) as raised:
        import scipy  # noqa: F401
    assert _missing_extra(raised.value) == "bench"
    assert _missing_extra(ModuleNotFoundError("x", name="not_an_extra")) is None


def test_the_model_error_lists_every_name(tmp_path, capsys):
    from zigzag_kdiff.diffusers import BUNDLED_MODELS, TINY_MODELS, load_pipeline

    assert main(["compare", "--model", str(tmp_path / "nosuch"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    with pytest.raises(ValueError) as raised:  # the library's own message, too
        load_pipeline(str(tmp_path / "nosuch"))
    for name in [*BUNDLED_MODELS, *TINY_MODELS]:
        assert name in error and repr(name) in str(raised.value), name


FAST = ["--steps", "1", "--methods", "euler", "--threads", "1", "--quiet"]


def test_a_reused_out_folder_holds_only_the_new_run(tmp_path, capsys):
    """The files an earlier compare wrote (its compare.json's list and compare's image names) are replaced; a file
    of the user's is left alone; the count says what was written, singular or plural."""
    out = tmp_path / "out"
    assert main(["compare", "--seeds", "3", "4", "--out", str(out), *FAST]) == 0
    assert "wrote 4 images, grid.png and compare.json" in capsys.readouterr().out
    (out / "notes.txt").write_text("mine")
    assert main(["compare", "--seeds", "5", "--prompt", "one red square on the left", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 image, grid.png and compare.json" in printed and "replacing 6 files" in printed
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "grid.png", "notes.txt", "p00-seed5-euler.png"]
    listed = [r["file"] for r in json.loads((out / "compare.json").read_text())["images"]]
    assert listed == ["p00-seed5-euler.png"]


def test_a_failed_run_leaves_the_earlier_one_in_place(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--seeds", "3", "--out", str(out), *FAST]) == 0
    before = sorted(p.name for p in out.iterdir())
    args = ["compare", "--model", "tiny", "--height", "60", "--out", str(out), *FAST]
    assert main(args) == 2 and "--height" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_dependency_noise_is_silenced_and_restored():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from zigzag_kdiff.cli import dependency_noise_silenced

    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    with dependency_noise_silenced():
        assert not diffusers_logging.is_progress_bar_enabled()
        assert not transformers_logging.is_progress_bar_enabled()
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()


def test_a_quiet_compare_prints_no_dependency_noise(tmp_path, capfd):
    """No diffusers torch_dtype deprecation and no loading progress bars (the test runner's own warning filters
    are set to show every warning here)."""
    import warnings

    capfd.readouterr()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["compare", "--out", str(tmp_path / "o"), *FAST]) == 0
    out, err = capfd.readouterr()
    assert err == "" and out.splitlines()[-1].startswith("wrote 2 images"), err
    assert not [w for w in shown if "torch_dtype" in str(w.message)]


def _import_pkg_resources_afresh(silenced: bool) -> list[str]:
    """The warnings a first ``import pkg_resources`` (what CLIP, imported by k-diffusion, does) shows; the modules
    already imported are put back afterwards."""
    import warnings

    from zigzag_kdiff.cli import dependency_noise_silenced

    def ours(name: str) -> bool:
        return name == "pkg_resources" or name.startswith("pkg_resources.")

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with dependency_noise_silenced(()) if silenced else warnings.catch_warnings():
                import pkg_resources  # noqa: F401
        return [str(w.message) for w in shown]
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_clip_pkg_resources_warning_is_silenced():
    assert any("pkg_resources is deprecated" in m for m in _import_pkg_resources_afresh(silenced=False))
    assert not any("pkg_resources" in m for m in _import_pkg_resources_afresh(silenced=True))
