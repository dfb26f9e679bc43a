"""The package's shape: one installed name, dependencies in one direction, docs that live in the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("whisperkv", "reference", "backends", "fixtures", "tests", "benchmarks", "docs")
                 for p in (ROOT / folder).rglob("*.py"))
CORE = sorted(p for p in (ROOT / "reference").glob("*.py"))  # reference/ minus its checks/ and app/ subpackages


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved against `package`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}  # `from . import kv` imports a module
    return names


def installed_name(path: Path) -> str:
    """reference/checks/verify.py -> whisperkv.reference.checks (the package the file's relative imports use)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    top = {"reference": ["whisperkv", "reference"], "backends": ["whisperkv", "backends"], "whisperkv": ["whisperkv"]}
    return ".".join(top[rel[0]] + list(rel[1:-1]))


def test_nothing_imports_the_source_folders_as_top_level_packages() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+(reference|backends|fixtures)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES if pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_imports_neither_backends_nor_checks_nor_app(path: Path) -> None:
    forbidden = ("whisperkv.backends", "whisperkv.reference.checks", "whisperkv.reference.app")
    bad = sorted(m for m in imported_modules(path, installed_name(path)) if m.startswith(forbidden))
    assert bad == [], f"{path.name} (core) imports {bad}"


def test_checks_do_not_import_the_app_and_backends_only_the_reference() -> None:
    for path in (ROOT / "reference" / "checks").rglob("*.py"):
        bad = [m for m in imported_modules(path, installed_name(path))
               if m.startswith(("whisperkv.reference.app", "whisperkv.backends"))]
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
    for path in (ROOT / "backends").rglob("*.py"):
        bad = [m for m in imported_modules(path, installed_name(path))
               if m.startswith(("whisperkv.reference.app", "whisperkv.reference.checks"))]
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_a_fresh_interpreter_imports_every_module_without_a_cycle() -> None:
    # A cycle shows up as an ImportError ("partially initialized module") when the modules are imported in
    # a bad order; importing each one first, in its own interpreter, finds it whatever the order.
    modules = sorted({installed_name(p) + ("" if p.name == "__init__.py" else "." + p.stem)
                      for p in SOURCES if p.relative_to(ROOT).parts[0] in ("whisperkv", "reference", "backends")
                      and "conformance" not in p.parts and p.name != "__main__.py"})
    code = ("import importlib, sys\nfor name in sys.argv[1:]:\n"
            "    for m in [k for k in sys.modules if k.startswith('whisperkv')]: del sys.modules[m]\n"
            "    importlib.import_module(name)\n")
    p = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]


def test_no_comment_cites_a_file_outside_the_repository() -> None:
    texts = {p: p.read_text() for p in SOURCES + sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md"))}
    outside = "ARCHITECTURE" + ".md"  # the notes in ../shared/, outside the repository (split: not to match here)
    assert [str(p.relative_to(ROOT)) for p, t in texts.items() if outside in t] == []
    for p, t in texts.items():
        for cited in re.findall(r"\bdocs/([\w-]+\.md)", t):
            assert (ROOT / "docs" / cited).is_file(), f"{p.relative_to(ROOT)} cites docs/{cited}, which is missing"


def test_the_command_line_does_not_import_tvm_until_a_tvm_backend_is_used() -> None:
    # `import tvm` costs ~1 s (the compiler): every CLI user would pay it for --help, --version, numpy
    # transcriptions and the backends' command registration if a package __init__ imported it.
    code = ("import sys\nfrom whisperkv.reference.app.cli import build_parser\n"
            "build_parser().parse_args(['transcribe', 'a.wav'])\nimport whisperkv.backends.tvm\n"
            "print(sorted(m for m in sys.modules if m == 'tvm' or m.startswith(('tvm.', 'onnx'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_the_public_names_resolve_on_first_use_and_the_command_module_costs_no_numpy() -> None:
    # `whisperkv` and `whisperkv.reference` import their public names on first use (PEP 562), so that the
    # command can start its heap warm-up (reference/app/heap.py) before numpy loads.
    code = ("import sys\nimport whisperkv, whisperkv.reference as r, whisperkv.reference.app.cli, "
            "whisperkv.reference.app.heap\nprint('numpy' in sys.modules)\n"
            "for m in (whisperkv, r):\n"
            "    assert set(m.__all__) - {'__version__'} == set(m._LAZY), m.__name__\n"
            "    assert all(getattr(m, n) is not None for n in m.__all__) and set(m.__all__) <= set(dir(m))\n"
            "print(whisperkv.load_model is r.load_model, whisperkv.Whisper.__module__)\n"
            "try:\n    whisperkv.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["False", "True whisperkv.reference.transcribe",
                                     "module 'whisperkv' has no attribute 'no_such_name'"]
