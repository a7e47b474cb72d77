"""Project-level consistency: dependency lists, chapter pairs, chapter imports."""

import re
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md") if p.with_suffix(".ipynb").exists())
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOT_PYTHON = {"python", "pip"}


def _req(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    name = m.group(1).lower().replace("_", "-")
    return CONDA_NAMES.get(name, name), m.group(2).replace(" ", "")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: not an exact pin: {line!r}"
            pins[_req(name)[0]] = version.strip()
    return pins


def test_environment_yml_matches_pyproject_and_lock():
    """Same packages as pyproject.toml, at exactly the versions of requirements.lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    pip_side = dict(_req(s) for s in reqs)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = {}
    for dep in env["dependencies"]:
        specs = dep["pip"] if isinstance(dep, dict) else [dep]
        for s in specs:
            name, ver = _req(s.split("=", 1)[0] if s.startswith("python=") else s)
            if name not in NOT_PYTHON:
                conda_side[name] = ver
    assert "conda-forge" in env["channels"]
    assert set(conda_side) == set(pip_side)
    lock = _lock()
    for name, ver in conda_side.items():
        assert ver == f"=={lock[name]}", (name, ver, lock[name])


def test_lock_pins_every_dependency_within_its_range():
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, rng = _req(spec)
        assert name in lock, f"{name} is not pinned in requirements.lock (run make lock)"
        assert lock[name] in SpecifierSet(rng), f"{name}=={lock[name]} outside {rng}"


def test_makefile_installs_with_the_lock():
    make = (ROOT / "Makefile").read_text()
    assert make.count("-c requirements.lock") >= 2


def test_there_are_chapters():
    assert [p.stem for p in CHAPTERS] == ["alpha", "bit_collapse", "diagnose", "hessian",
                                          "landscape", "mixed_precision", "quantization"]


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_pair_in_sync(md):
    """The .md and the .ipynb hold the same cells (type, source, tags)."""
    text = jupytext.read(md)
    ipynb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)

    def cells(nb):
        return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ())))
                for c in nb.cells]

    assert cells(text) == cells(ipynb), (
        f"{md.name} and its .ipynb differ: run `make notebooks` to re-pair and re-execute"
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_executed_in_order(md):
    """nbval needs stored outputs from one real top-to-bottom run."""
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), "re-execute with `make notebooks`"
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_uses_public_api_only(md):
    source = md.read_text()
    imports = re.findall(r"^\s*(?:from|import)\s+(quantlens[\w.]*)", source, flags=re.M)
    assert imports and set(imports) == {"quantlens"}, imports
    assert not re.search(r"ql\.(?:\w+\.)*_\w", source), "private quantlens name used"
