"""pytest plugin: ``scvi`` and every ``scvi.*`` import resolve to ``scvi_rs``.

Loaded with ``-p scvi_alias_plugin`` before scvi-tools' own ``conftest.py``, so its test files
run unchanged against scvi_rs. ``import scvi.model`` gives the very module object
``scvi_rs.model`` (mocks and ``monkeypatch`` on ``scvi.x.y`` patch scvi_rs).

A name that scvi-tools defines but scvi_rs does not (``scvi.model.TOTALVI``, the whole of
``scvi.external``) must not stop a test file from being collected: the file's other tests
still have to run. So, in this process only, such a name resolves to a placeholder that
raises ``NotImplementedError`` naming what is missing as soon as a test uses it. Which
names qualify is read from scvi-tools' own sources (the sdist's ``src/scvi``), never
guessed: a typo in a test still fails as an ``AttributeError``/``ImportError``.

Outcomes are written as JSON to the path in ``SCVI_COMPAT_RESULTS`` (one record per test
id), for ``run_scvi_tools_suite.py`` to compare with the expectations file.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import pkgutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

REAL = "scvi_rs"
ALIAS = "scvi"


def _reference_root() -> Path | None:
    root = os.environ.get("SCVI_COMPAT_REFERENCE_SRC")
    return Path(root) if root else None


def _reference_names(alias_name: str) -> set[str] | None:
    """Names that scvi-tools' module ``alias_name`` defines, or None if it has no such module."""
    root = _reference_root()
    if root is None:
        return None
    base = root.joinpath(*alias_name.split(".")[1:])
    source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not source.is_file():
        return None
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
        elif isinstance(node, ast.If | ast.Try):
            # `if TYPE_CHECKING:` / `try: import x` blocks: take the names they bind too
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.alias):
                    names.add((sub.asname or sub.name).split(".")[0])
    # submodules of a package are names too (`from scvi.data import _download`)
    if base.is_dir():
        for child in base.iterdir():
            if child.suffix == ".py" and child.stem != "__init__":
                names.add(child.stem)
            elif child.is_dir() and (child / "__init__.py").is_file():
                names.add(child.name)
    return names


class MissingInScviRs:
    """Stands for a name scvi-tools has and scvi_rs does not; any use raises."""

    def __init__(self, qualname: str) -> None:
        object.__setattr__(self, "_qualname", qualname)
        # pytest names parametrized cases after `__name__` (`test_x[TOTALVI]`), as for classes
        object.__setattr__(self, "__name__", qualname.rsplit(".", 1)[-1])
        object.__setattr__(self, "__qualname__", qualname.rsplit(".", 1)[-1])

    def _fail(self) -> NotImplementedError:
        return NotImplementedError(
            f"scvi_rs has no {self._qualname} (a scvi-tools name this harness stands in for)"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._fail()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise self._fail()

    def __repr__(self) -> str:
        return self._qualname.rsplit(".", 1)[-1]

    def __mro_entries__(self, bases: tuple) -> tuple:
        # `class Test(scvi.train.Missing): ...` at module level still defines the class;
        # building an instance of it raises.
        placeholder = self

        class _MissingBase:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise placeholder._fail()

        _MissingBase.__name__ = _MissingBase.__qualname__ = repr(self)
        return (_MissingBase,)


def _install_placeholders(module: types.ModuleType, alias_name: str) -> None:
    """Give ``module`` a ``__getattr__`` that stands in for the reference's missing names."""
    if getattr(module, "_scvi_compat_guarded", False):
        return
    names = _reference_names(alias_name)
    if not names:
        return
    previous = module.__dict__.get("__getattr__")

    def __getattr__(name: str) -> Any:
        if previous is not None:
            try:
                return previous(name)
            except AttributeError:
                pass
        if name in names:
            submodule = f"{module.__name__}.{name}"
            try:  # a real lazily imported submodule wins over a placeholder
                return importlib.import_module(submodule)
            except ModuleNotFoundError as err:
                if err.name != submodule:
                    raise
            return MissingInScviRs(f"{alias_name}.{name}")
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module._scvi_compat_guarded = True  # type: ignore[attr-defined]


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, real_name: str, alias_name: str) -> None:
        self.real_name = real_name
        self.alias_name = alias_name
        self._real_spec = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.real_name)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # the import system stamped the alias spec on the module; scvi_rs keeps its own
        if self._real_spec is not None:
            module.__spec__ = self._real_spec
        _install_placeholders(module, self.alias_name)


class _PlaceholderLoader(importlib.abc.Loader):
    """A scvi-tools module that scvi_rs lacks entirely (``scvi.external``)."""

    def __init__(self, alias_name: str) -> None:
        self.alias_name = alias_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name, f"scvi-tools' {spec.name}: not in scvi_rs")

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # so that `scvi.external.x` is looked up here too
        _install_placeholders(module, self.alias_name)


class ScviAliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``scvi[.x.y]`` as ``scvi_rs[.x.y]`` (or a placeholder module, see above)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real_name = REAL + fullname[len(ALIAS) :]
        parent_real = real_name.rpartition(".")[0]
        parent = sys.modules.get(parent_real) if parent_real else None
        real_spec = None
        if parent_real == "" or (parent is not None and hasattr(parent, "__path__")):
            real_spec = importlib.util.find_spec(real_name)
        if real_spec is not None:
            loader = _AliasLoader(real_name, fullname)
            return importlib.machinery.ModuleSpec(
                fullname, loader, is_package=real_spec.submodule_search_locations is not None
            )
        if _reference_names(fullname) is not None:
            return importlib.machinery.ModuleSpec(
                fullname, _PlaceholderLoader(fullname), is_package=True
            )
        return None


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (before an installed scvi-tools).

    Every scvi_rs module is imported here and registered under its ``scvi`` name, so that
    ``scvi.train.X`` reached by attribute (scvi_rs loads sub-packages lazily) is guarded too.
    """
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        del sys.modules[name]
    if not any(isinstance(f, ScviAliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ScviAliasFinder())
    real = importlib.import_module(REAL)
    modules = [real]
    for info in pkgutil.walk_packages(real.__path__, prefix=REAL + "."):
        modules.append(importlib.import_module(info.name))
    for module in modules:
        alias_name = ALIAS + module.__name__[len(REAL) :]
        sys.modules.setdefault(alias_name, module)
        _install_placeholders(module, alias_name)


if os.environ.get("SCVI_COMPAT_REFERENCE") != "1":
    install()

_results: dict[str, dict[str, str]] = {}


def _record(nodeid: str, outcome: str, message: str) -> None:
    previous = _results.get(nodeid)
    # a failing setup or teardown decides the test's outcome
    if previous is not None and previous["outcome"] != "passed" and outcome == "passed":
        return
    _results[nodeid] = {"outcome": outcome, "message": message[:500]}


def _short(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0] if crash.message else ""
    if isinstance(report.longrepr, tuple):  # skips: (path, line, reason)
        return str(report.longrepr[2])
    return str(report.longrepr).splitlines()[-1] if report.longrepr else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        _record(report.nodeid, outcome, "" if outcome == "passed" else _short(report))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _record(report.nodeid, "collection-error", _short(report))


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("SCVI_COMPAT_RESULTS")
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(_results, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
