#!/usr/bin/env python3
"""Run scvi-tools' own test files against scvi_rs and compare with the expectations file.

    python3 tests/compat/run_scvi_tools_suite.py            # the listed files, against scvi_rs
    python3 tests/compat/run_scvi_tools_suite.py --reference   # the same files, on scvi-tools

It needs no environment of its own to start: it makes (or reuses) the virtual environment
``~/.venvs/scvi-rs-compat``, with scvi-tools' test-only dependencies (scanpy, mudata,
lightning, ... come with ``scvi-tools==1.4.2`` itself, which ``--reference`` runs) and this
checkout's scvi_rs; fetches the scvi-tools sdist, which ships ``tests/``, into
``~/.cache/scvi-rs-compat``; and runs the files under ``scvi_alias_plugin`` with ``scvi``
imported as ``scvi_rs``. Test bodies are never edited.

``expectations.json`` holds every test id of the listed files: ``"pass"`` or the reason it is
not expected to pass. The run exits 1 when a test expected to pass does not (a regression)
or when a test is missing from the file; tests that pass beyond the expectations are listed
so that the file can be updated (``--update`` rewrites their entries to ``"pass"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXPECTATIONS = HERE / "expectations.json"
REQUIREMENTS = HERE / "requirements.txt"
SCVI_TOOLS_VERSION = "1.4.2"

FILES = [
    "tests/data/test_anndata.py",
    "tests/data/test_anntorchdataset.py",
    "tests/data/test_synthetic_iid.py",
    "tests/data/test_data_utils.py",
    "tests/dataloaders/test_dataloaders.py",
    "tests/dataloaders/test_datasplitter.py",
    "tests/dataloaders/test_samplers.py",
    "tests/distributions/test_negative_binomial.py",
    "tests/model/base/test_base_model.py",
    "tests/model/test_scvi.py",
    "tests/model/test_differential.py",
    "tests/model/test_differential_abundance.py",
    "tests/module/test_vae.py",
    "tests/nn/test_embedding.py",
    "tests/train/test_config.py",
    "tests/train/test_trainingplans.py",
    "tests/train/test_callbacks.py",
    # SCANVI and the semi-supervised framework
    "tests/model/test_scanvi.py",
    "tests/module/test_scanvae.py",
    # MuData, minified models, Pyro modules
    "tests/data/test_mudata.py",
    "tests/model/test_models_with_minified_data.py",
    "tests/model/test_models_with_mudata_minified_data.py",
    "tests/model/test_pyro.py",
]


class Offline(RuntimeError):
    """The package index could not be reached (the run is skipped, not failed)."""


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=False, **kwargs)


def ensure_venv(venv: Path) -> Path:
    """Create the compat environment (once) and install this checkout's scvi_rs into it."""
    python = _venv_python(venv)
    if not python.exists():
        if _run([sys.executable, "-m", "venv", str(venv)]).returncode != 0:
            raise SystemExit(f"could not create the virtual environment {venv}")
    stamp = venv / ".scvi-rs-compat-requirements"
    wanted = REQUIREMENTS.read_text()
    if not stamp.exists() or stamp.read_text() != wanted:
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        if _run([*pip, "-r", str(REQUIREMENTS)]).returncode != 0:
            raise Offline(f"pip could not install {REQUIREMENTS.name} into {venv}")
        stamp.write_text(wanted)
    probe = _run(
        [str(python), "-c", "import scvi_rs, pathlib; print(pathlib.Path(scvi_rs.__file__))"],
        capture_output=True,
        text=True,
    )
    installed = Path(probe.stdout.strip()) if probe.returncode == 0 else None
    if installed is None or REPO not in installed.parents:
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps"]
        if _run([*pip, "-e", str(REPO)]).returncode != 0:
            raise SystemExit(f"could not install scvi_rs from {REPO} into {venv}")
    return python


def ensure_sdist(python: Path, cache: Path, version: str) -> Path:
    """The unpacked scvi-tools sdist (downloaded once into ``cache``)."""
    root = cache / f"scvi_tools-{version}"
    if (root / "tests" / "conftest.py").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"scvi_tools-{version}.tar.gz"
    if not archive.is_file():
        cmd = [str(python), "-m", "pip", "download", "--disable-pip-version-check", "--no-deps"]
        cmd += ["--no-binary", ":all:", f"scvi-tools=={version}", "-d", str(cache)]
        if _run(cmd).returncode != 0 or not archive.is_file():
            raise Offline(f"could not download the scvi-tools {version} sdist")
    partial = cache / f".unpacking-{version}"
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial / root.name, root)
    shutil.rmtree(partial, ignore_errors=True)
    return root


def run_suite(
    python: Path, sdist: Path, files: list[str], results: Path, reference: bool, extra: list[str]
) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["SCVI_COMPAT_REFERENCE_SRC"] = str(sdist / "src" / "scvi")
    env["SCVI_COMPAT_RESULTS"] = str(results)
    env["SCVI_COMPAT_REFERENCE"] = "1" if reference else "0"
    env.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 1, 4)))
    results.unlink(missing_ok=True)
    cmd = [str(python), "-m", "pytest", "-p", "scvi_alias_plugin", "-p", "no:cacheprovider"]
    cmd += ["-q", "-rN", "--tb=line", *extra, *files]
    return _run(cmd, cwd=sdist, env=env).returncode


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def compare(results: dict[str, dict[str, str]], expectations: dict[str, str], files: list[str]):
    """Print per-file counts; return (regressions, unexpected passes, unknown ids)."""
    in_scope = {k: v for k, v in expectations.items() if _file_of(k) in files}
    regressions, new_passes, unknown = [], [], []
    per_file: dict[str, Counter] = defaultdict(Counter)
    for nodeid, expected in sorted(in_scope.items()):
        got = results.get(nodeid, {"outcome": "not run", "message": ""})
        passed = got["outcome"] == "passed"
        counts = per_file[_file_of(nodeid)]
        counts["tests"] += 1
        counts["passed"] += passed
        if expected == "pass":
            counts["expected"] += 1
            if not passed:
                regressions.append((nodeid, got))
        elif passed:
            new_passes.append((nodeid, expected))
    for nodeid in sorted(set(results) - set(in_scope)):
        if results[nodeid]["outcome"] != "collection-error" or "::" in nodeid:
            unknown.append((nodeid, results[nodeid]))
    width = max((len(f) for f in per_file), default=10)
    print(f"\n{'file':<{width}}  passed  expected  tests")
    for name in files:
        c = per_file.get(name, Counter())
        print(f"{name:<{width}}  {c['passed']:>6}  {c['expected']:>8}  {c['tests']:>5}")
    total = sum(per_file.values(), Counter())
    print(f"{'total':<{width}}  {total['passed']:>6}  {total['expected']:>8}  {total['tests']:>5}")
    return regressions, new_passes, unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("~/.venvs/scvi-rs-compat").expanduser())
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/scvi-rs-compat").expanduser())
    parser.add_argument("--version", default=SCVI_TOOLS_VERSION, help="scvi-tools sdist version")
    parser.add_argument("--reference", action="store_true", help="run the files on scvi-tools")
    parser.add_argument("--update", action="store_true", help="mark unexpected passes 'pass'")
    parser.add_argument(
        "--skip-if-offline",
        action="store_true",
        help="exit 0 with a message when the package index cannot be reached (CI)",
    )
    parser.add_argument("files", nargs="*", help="a subset of the listed files")
    args, extra = parser.parse_known_args(argv)
    files = args.files or FILES
    unknown_files = sorted(set(files) - set(FILES))
    if unknown_files:
        parser.error(f"not in the harness list: {', '.join(unknown_files)}")

    try:
        python = ensure_venv(args.venv)
        sdist = ensure_sdist(python, args.cache, args.version)
    except Offline as err:
        if args.skip_if_offline:
            print(f"compat harness skipped: {err}")
            return 0
        raise SystemExit(str(err)) from None

    name = "reference_results.json" if args.reference else "results.json"
    results_path = args.cache / name
    started = time.perf_counter()
    pytest_rc = run_suite(python, sdist, files, results_path, args.reference, extra)
    print(f"pytest exited {pytest_rc} after {time.perf_counter() - started:.0f} s")
    if not results_path.is_file():
        print("no results were written: pytest did not get as far as running the tests")
        return 1
    results = json.loads(results_path.read_text())
    if args.reference:
        counts = Counter(r["outcome"] for r in results.values())
        print(f"scvi-tools {args.version}: {dict(counts)}; results in {results_path}")
        return 0

    expectations = json.loads(EXPECTATIONS.read_text())
    regressions, new_passes, unknown = compare(results, expectations, files)
    for nodeid, got in regressions:
        print(f"REGRESSION {nodeid}: {got['outcome']}: {got['message']}")
    for nodeid, reason in new_passes:
        print(f"now passes (expected not to: {reason}): {nodeid}")
    for nodeid, got in unknown:
        print(f"NOT IN EXPECTATIONS {nodeid}: {got['outcome']}")
    if args.update and new_passes:
        for nodeid, _ in new_passes:
            expectations[nodeid] = "pass"
        tmp = EXPECTATIONS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(expectations, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, EXPECTATIONS)
        print(f"{len(new_passes)} entries of {EXPECTATIONS.name} set to 'pass'")
    return 1 if regressions or unknown else 0


if __name__ == "__main__":
    sys.exit(main())
