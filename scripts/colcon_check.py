#!/usr/bin/env python3
"""Build and test occ_audit_ros with colcon in a fresh workspace, then check the install tree.

Run from anywhere with the venv's Python (``./run_tests.sh`` does):

    .venv/bin/python scripts/colcon_check.py                 # build, colcon test, check
    .venv/bin/python scripts/colcon_check.py --no-colcon-test  # build and check only
    .venv/bin/python scripts/colcon_check.py --check-only      # check an existing workspace

Steps, each timed:

1. colcon itself: ``--colcon PATH``, else ``build/colcon_venv/`` (created here with the pinned
   :data:`COLCON_REQUIREMENTS`; a virtual environment of its own, so that colcon's pytest plugins
   and setuptools pin do not enter the package's venv).
2. A fresh workspace ``build/colcon_ws/``: ``src/occ_audit_ros/`` is a copy of the files git would
   commit (tracked and untracked-but-not-ignored files), so build outputs of the source tree
   (``occ_audit_ros/msg/``, ``.venv/``, ...) cannot leak into the install.
3. ``colcon build`` (ament_cmake, ``BUILD_TESTING=ON``) and ``colcon test``; the run fails when
   the test results hold no test, a failure or an error.
4. The install tree (:func:`check_install`): the ament index entry, ``lib/occ_audit_ros/`` holds
   every executable of ``scripts/ros_executables/``, ``share/occ_audit_ros/`` every file of
   ``launch/ config/ models/ data/ msg/`` (same bytes), the Python package every module; and every
   file that a shipped ``config/**/*.yaml`` or a ``paths.resource("...")`` call of the code names
   is resolved by the INSTALLED ``occ_audit_ros.paths`` (a subprocess with the install's
   ``setup.sh`` environment, working directory outside the repo) to a file under
   ``share/occ_audit_ros/``.

In the package's venv (the ROS 2 PyPI wheels, no ROS install) the build finds the ROS packages
in the venv (``AMENT_PREFIX_PATH``) and uses the cmake fixups of ``scripts/build_msgs.py`` (the
wheels' exported targets name another machine's Python include directory). With a sourced ROS 2
install instead, the environment is used as it is.

Exit status 0 when everything passed; the last line says ``colcon check: OK`` or lists problems.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "occ_audit_ros"
DEFAULT_WORKSPACE = REPO_ROOT / "build" / "colcon_ws"
DEFAULT_COLCON_VENV = REPO_ROOT / "build" / "colcon_venv"

#: colcon and the one ament package the venv lacks for ``colcon test`` (ament_cmake_pytest, found
#: through CMAKE_PREFIX_PATH), pinned. On a ROS 2 install these come from the distribution
#: (python3-colcon-common-extensions, ros-<distro>-ament-cmake-pytest).
COLCON_REQUIREMENTS = (
    "colcon-core==0.21.3",
    "colcon-cmake==0.2.30",
    "colcon-ros==0.5.0",
    "colcon-package-selection==0.2.10",
    "colcon-test-result==0.3.8",
    "colcon-library-path==0.2.1",
    "colcon-pkg-config==0.1.0",
    "colcon-python-setup-py==0.2.9",
    "colcon-recursive-crawl==0.2.3",
    "catkin-pkg==1.1.1",
    "ros-ament-cmake-pytest==2.7.3",
)

#: pytest options of ``colcon test`` here (CMake OCC_AUDIT_ROS_PYTEST_ADDOPTS): the same run of
#: ./run_tests.sh runs all of test/ from the source tree, so the install run leaves out the slowest
#: CLIP numerics tests (the same code on the same inputs; about 70 % of test/unit's time). What
#: stays reads config/, data/ and models/ through the installed package: presets, the keyframe, every
#: backend with its shipped checkpoints. ``-p no:dash``: see run_tests.sh.
COLCON_TEST_ADDOPTS = " ".join(["-p no:dash"] + [f"--deselect=test/unit/{test}" for test in (
    "test_relevancy.py::test_preset_equals_naive",
    "test_relevancy.py::test_batched_equals_naive",
    "test_relevancy.py::test_flip_equivariance",
    "test_relevancy.py::test_reference_tiling_leaves_wide_images_uncovered",
    "test_pipeline.py::test_keyframe_to_voxels",
)])

#: Folders installed to share/occ_audit_ros/ by CMakeLists.txt whose every file must be there.
SHARE_DIRS = ("launch", "config", "models", "data", "msg", "srv")
#: Files the RViz and launch users open by name.
REQUIRED_SHARE_FILES = ("package.xml", "config/rviz/occ_audit.rviz", "config/perception.yaml")
#: A string in a config file names a shipped file when it starts with one of these folders.
REF_PATTERN = re.compile(r"^(?:\./)?(?:%s)/\S+$" % "|".join(SHARE_DIRS))
#: Keys whose non-empty value must be a file: a shipped one (REF_PATTERN) or an absolute path.
FILE_KEY_PATTERN = re.compile(r"(checkpoint|_file|_path|_dir)$")


class CheckError(RuntimeError):
    """A step failed; the message says which and where its log is."""


def log(message: str) -> None:
    """Print one progress line, prefixed ``[colcon_check]``."""
    print(f"[colcon_check] {message}", flush=True)


def rel(path: Path) -> str:
    """``path`` relative to the repo root when inside it, else as given (for report lines)."""
    try:
        return str(Path(path).relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Environment


def venv_mode() -> bool:
    """True when this Python is a venv holding the ROS 2 PyPI wheels (ament_cmake under its share/)."""
    return sys.prefix != sys.base_prefix and (Path(sys.prefix) / "share" / "ament_cmake_core").is_dir()


def ensure_colcon(colcon_venv: Path) -> Path:
    """The colcon executable of ``colcon_venv``, created or updated to :data:`COLCON_REQUIREMENTS`.

    Raises:
        CheckError: when pip fails (no network to PyPI, ...).
    """
    colcon = colcon_venv / "bin" / "colcon"
    stamp = colcon_venv / ".occ_audit_colcon_requirements"
    want = "\n".join(COLCON_REQUIREMENTS)
    if colcon.is_file() and stamp.is_file() and stamp.read_text() == want:
        return colcon
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    log(f"installing colcon into {rel(colcon_venv)} ({len(COLCON_REQUIREMENTS)} pinned packages)")
    try:
        if not (colcon_venv / "bin" / "python").is_file():
            subprocess.run([base_python, "-m", "venv", str(colcon_venv)], check=True)
        subprocess.run([str(colcon_venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *COLCON_REQUIREMENTS], check=True)
    except subprocess.CalledProcessError as error:
        raise CheckError(f"could not install colcon into {colcon_venv}: {error}") from error
    stamp.write_text(want)
    return colcon


def build_environment(colcon: Path) -> dict[str, str]:
    """Environment of the colcon calls: in venv mode the venv's ROS packages, else the caller's."""
    env = dict(os.environ)
    env["PATH"] = f"{colcon.parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # Tests over the shared data tree find it through OCC_AUDIT_SHARED: the installed package's
    # default (<repo>/../shared) points next to site-packages.
    shared = REPO_ROOT.parent / "shared"
    if "OCC_AUDIT_SHARED" not in env and shared.is_dir():
        env["OCC_AUDIT_SHARED"] = str(shared)
    if venv_mode():
        # Only this venv's ROS packages, also when a ROS 2 setup.bash has been sourced; the colcon
        # venv adds ament_cmake_pytest.
        env["AMENT_PREFIX_PATH"] = sys.prefix
        env["CMAKE_PREFIX_PATH"] = os.pathsep.join([sys.prefix, str(colcon.parent.parent)])
        env.pop("COLCON_PREFIX_PATH", None)
        env.pop("PYTHONPATH", None)
    return env


def source_files(repo: Path) -> list[Path]:
    """Files of the package as git would commit them (relative paths), or every file outside the
    ignored build folders when ``repo`` is no git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        return sorted(Path(n) for n in names if (repo / n).is_file())
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "install", "log", "runs", "output", "__pycache__"}
        return sorted(p.relative_to(repo) for p in repo.rglob("*")
                      if p.is_file() and not skip.intersection(p.relative_to(repo).parts))


def copy_sources(repo: Path, dest: Path) -> str:
    """Copy the package's files to ``dest``; return the sha256 over names and contents."""
    sha = hashlib.sha256()
    for name in source_files(repo):
        src, dst = repo / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        sha.update(str(name).encode() + b"\0" + src.read_bytes() + b"\0")
    return sha.hexdigest()


def source_digest(repo: Path = REPO_ROOT) -> str:
    """sha256 over the package's files as :func:`copy_sources` computes it (staleness check)."""
    sha = hashlib.sha256()
    for name in source_files(repo):
        sha.update(str(name).encode() + b"\0" + (repo / name).read_bytes() + b"\0")
    return sha.hexdigest()


def write_fixups(path: Path) -> Path:
    """scripts/build_msgs.py's cmake fixups for this venv's Python and NumPy include directories."""
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("build_msgs", REPO_ROOT / "scripts" / "build_msgs.py")
    build_msgs = sys.modules.get("build_msgs")
    if build_msgs is None:
        build_msgs = importlib.util.module_from_spec(spec)
        sys.modules["build_msgs"] = build_msgs  # its dataclasses look their module up there
        spec.loader.exec_module(build_msgs)
    python_include, numpy_include = build_msgs.python_build_paths()
    path.write_text(build_msgs.FIXUPS_CMAKE.replace("@PYTHON_INCLUDE@", python_include)
                    .replace("@NUMPY_INCLUDE@", numpy_include))
    return path


def run_colcon(args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
    """Run one colcon command with its output in ``log_path``.

    Raises:
        CheckError: on a non-zero exit (the log's tail is printed to stderr).
    """
    with open(log_path, "w") as log_file:
        log_file.write(f"$ {' '.join(args)}\n")
        log_file.flush()
        result = subprocess.run(args, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_path.read_text().splitlines()[-60:]
        print("\n".join(tail), file=sys.stderr)
        raise CheckError(f"{' '.join(args[:2])} failed (exit {result.returncode}); log: {rel(log_path)}")


# ---------------------------------------------------------------------------------------------
# Test results


def test_results(workspace: Path) -> dict:
    """Counts over the JUnit files that ``colcon test`` left in ``build/<pkg>/test_results/``.

    Returns:
        {"files": [...], "tests": n, "failures": n, "errors": n, "skipped": n, "failed": [names]}.
    """
    totals = {"files": [], "tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": []}
    for xml_path in sorted((workspace / "build" / PACKAGE / "test_results").rglob("*.xml")):
        root = ET.parse(xml_path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        totals["files"].append(str(xml_path.relative_to(workspace)))
        for suite in suites:
            for key in ("tests", "failures", "errors", "skipped"):
                totals[key] += int(suite.get(key, 0) or 0)
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    totals["failed"].append(f"{case.get('classname')}.{case.get('name')}")
    return totals


# ---------------------------------------------------------------------------------------------
# Install tree


def install_prefix(workspace: Path) -> Path:
    """The package's prefix in ``workspace`` (colcon's default isolated layout)."""
    return workspace / "install" / PACKAGE


def setup_environment(workspace: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment after ``. install/setup.sh`` (colcon's POSIX setup script) over ``base``.

    Raises:
        CheckError: when the script fails.
    """
    base = dict(os.environ if base is None else base)
    setup = workspace / "install" / "setup.sh"
    result = subprocess.run(["sh", "-c", '. "$1" && env -0', "sh", str(setup)], env=base,
                            capture_output=True, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        raise CheckError(f"sourcing {setup} failed: {result.stderr.decode()[-2000:]}")
    env = dict(line.split("=", 1) for line in result.stdout.decode().split("\0") if "=" in line)
    return env


def run_python_environment(workspace: Path) -> dict[str, str]:
    """Environment for running the INSTALLED package with this venv's Python: ``install/setup.sh``,
    and in venv mode the library path the venv's ros_wheels_bootstrapper would add (appended after
    the install's, so the install's message libraries win; its own re-exec would reorder)."""
    base = dict(os.environ)
    base.pop("PYTHONPATH", None)
    env = setup_environment(workspace, base)
    if venv_mode():
        site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        extra = [str(Path(sys.prefix) / "lib")] + sorted(str(p) for p in site.glob("ros_*.libs") if p.is_dir())
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(parts + [p for p in extra if p not in parts])
        env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
        # the executables' `#!/usr/bin/env python3` is this venv's Python
        env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def config_references(config_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Shipped files named by ``config_dir/**/*.yaml``.

    Returns:
        ({reference: [file:key, ...]}, problems): a reference is a string (value or list item) that
        starts with one of :data:`SHARE_DIRS`; a problem is a key ending in ``checkpoint``,
        ``_file``, ``_path`` or ``_dir`` whose non-empty value is neither such a reference nor an
        absolute path, or a YAML file that does not parse.
    """
    import yaml  # noqa: PLC0415

    refs: dict[str, list[str]] = {}
    problems: list[str] = []

    def walk(node, key: str, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k), where)
        elif isinstance(node, list):
            for item in node:
                walk(item, key, where)
        elif isinstance(node, str):
            leaf = key.rsplit(".", 1)[-1]
            if REF_PATTERN.match(node):
                refs.setdefault(node.removeprefix("./"), []).append(f"{where}:{key}")
            elif node and FILE_KEY_PATTERN.search(leaf) and not os.path.isabs(node):
                problems.append(f"{where}:{key} = {node!r} names no file under {'/, '.join(SHARE_DIRS)}/")

    for path in sorted(config_dir.rglob("*.yaml")):
        where = str(path.relative_to(config_dir.parent))
        try:
            walk(yaml.safe_load(path.read_text()), "", where)
        except yaml.YAMLError as error:
            problems.append(f"{where}: not valid YAML ({error})")
    return refs, problems


def code_references(package_dir: Path) -> dict[str, list[str]]:
    """Literal ``paths.resource("...")`` / ``resource("...")`` arguments in ``package_dir/**/*.py``
    (f-strings with constant prefixes are skipped): {reference: [module, ...]}."""
    refs: dict[str, list[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(), str(path))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and (getattr(node.func, "attr", None) == "resource" or getattr(node.func, "id", None) == "resource")):
                refs.setdefault(node.args[0].value, []).append(str(path.relative_to(package_dir.parent)))
    return refs


_RESOLVE_SNIPPET = r"""
import json, os, sys
import occ_audit_ros
from occ_audit_ros import paths
out = {"package_file": occ_audit_ros.__file__, "cwd": os.getcwd(), "sys_path": sys.path, "resolved": {}}
for ref in json.loads(sys.argv[1]):
    try:
        out["resolved"][ref] = str(paths.resource(ref))
    except FileNotFoundError as error:
        out["resolved"][ref] = "ERROR: " + str(error)
print(json.dumps(out))
"""


def check_install(workspace: Path, source: Path | None = None) -> tuple[list[str], list[str]]:
    """Check the install tree of ``workspace`` against the sources it was built from.

    Args:
        workspace: a colcon workspace with ``install/occ_audit_ros`` (isolated layout).
        source: the package sources; default ``workspace/src/occ_audit_ros``.

    Returns:
        (report lines, problems); no problems = the install is complete.
    """
    source = source or workspace / "src" / PACKAGE
    prefix = install_prefix(workspace)
    share = prefix / "share" / PACKAGE
    report: list[str] = []
    problems: list[str] = []
    if not prefix.is_dir():
        return report, [f"{prefix} does not exist: colcon build did not run or failed"]

    index = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    (report if index.is_file() else problems).append(f"ament index entry {rel(index)}: "
                                                     f"{'present' if index.is_file() else 'MISSING'}")

    executables = sorted(p.name for p in (source / "scripts" / "ros_executables").iterdir() if p.is_file())
    missing_exe = [n for n in executables if not os.access(prefix / "lib" / PACKAGE / n, os.X_OK)]
    problems += [f"executable lib/{PACKAGE}/{n} missing or not executable" for n in missing_exe]
    env = run_python_environment(workspace)
    helped = []
    with tempfile.TemporaryDirectory(prefix="occ_colcon_check_") as cwd:
        for name in executables:
            if name in missing_exe:
                continue
            try:
                result = subprocess.run([str(prefix / "lib" / PACKAGE / name), "--help"], cwd=cwd, env=env,
                                        capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                problems.append(f"lib/{PACKAGE}/{name} --help did not finish within 300 s")
                continue
            if result.returncode == 0 and "usage" in result.stdout.lower():
                helped.append(name)
            else:
                problems.append(f"lib/{PACKAGE}/{name} --help failed (exit {result.returncode}): "
                                f"{(result.stderr or result.stdout)[-1500:]}")
    report.append(f"lib/{PACKAGE}/: {len(executables) - len(missing_exe)}/{len(executables)} executables, "
                  f"{len(helped)} answer --help from the install ({', '.join(executables)})")

    for name in REQUIRED_SHARE_FILES:
        if not (share / name).is_file():
            problems.append(f"share/{PACKAGE}/{name} missing")
    for folder in SHARE_DIRS:
        files = sorted(p for p in (source / folder).rglob("*") if p.is_file()) if (source / folder).is_dir() else []
        missing = differ = 0
        for src in files:
            dst = share / src.relative_to(source)
            if not dst.is_file():
                missing += 1
                problems.append(f"share/{PACKAGE}/{src.relative_to(source)} missing")
            elif dst.stat().st_size != src.stat().st_size or dst.read_bytes() != src.read_bytes():
                differ += 1
                problems.append(f"share/{PACKAGE}/{src.relative_to(source)} differs from the source")
        if not files and folder == "srv":
            continue  # a package without services
        size = sum(p.stat().st_size for p in files)
        report.append(f"share/{PACKAGE}/{folder}/: {len(files) - missing - differ}/{len(files)} files "
                      f"identical ({size / 1e6:.1f} MB)")

    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / pyver / "site-packages"
    modules = sorted(p.relative_to(source) for p in (source / PACKAGE).rglob("*.py"))
    missing_py = [m for m in modules if not (site / m).is_file()]
    problems += [f"Python module {m} not installed under {rel(site)}" for m in missing_py]
    generated = sorted((site / PACKAGE / "msg").glob("_*.py")) if (site / PACKAGE / "msg").is_dir() else []
    report.append(f"{rel(site)}/{PACKAGE}/: {len(modules) - len(missing_py)}/{len(modules)} modules, "
                  f"{len(generated)} generated message modules")
    if not generated:
        problems.append(f"no generated message modules under {rel(site / PACKAGE / 'msg')}")

    config_refs, config_problems = config_references(source / "config")
    problems += config_problems
    code_refs = code_references(source / PACKAGE)
    refs = sorted(set(config_refs) | set(code_refs))
    with tempfile.TemporaryDirectory(prefix="occ_colcon_check_") as cwd:
        result = subprocess.run([sys.executable, "-c", _RESOLVE_SNIPPET, json.dumps(refs)], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        problems.append(f"the installed occ_audit_ros.paths could not run: {result.stderr[-2000:]}")
        return report, problems
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if not Path(out["package_file"]).resolve().is_relative_to(site.resolve()):
        problems.append(f"occ_audit_ros imported from {out['package_file']}, not from {rel(site)}")
    leaked = [p for p in out["sys_path"] if p and Path(p).resolve().is_relative_to(REPO_ROOT.resolve())
              and not Path(p).resolve().is_relative_to(workspace.resolve()) and ".venv" not in Path(p).parts]
    if leaked:
        problems.append(f"the source tree is on sys.path of the install run: {leaked}")
    report.append(f"installed package imported from {out['package_file']} (cwd {out['cwd']})")
    for ref in refs:
        resolved = out["resolved"][ref]
        users = config_refs.get(ref, []) + code_refs.get(ref, [])
        ok = not resolved.startswith("ERROR") and Path(resolved).resolve().is_relative_to(share.resolve())
        if ok:
            report.append(f"  {ref} -> {rel(Path(resolved))}  (named by {', '.join(users)})")
        else:
            problems.append(f"{ref} (named by {', '.join(users)}) resolves to {resolved}, not under {rel(share)}")
    return report, problems


# ---------------------------------------------------------------------------------------------


def build_workspace(workspace: Path, colcon: Path, run_tests: bool) -> dict:
    """Fresh workspace, colcon build (+ colcon test); returns timings and test counts.

    Raises:
        CheckError: on a failed build, failed tests or no test run.
    """
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    if workspace.exists():
        shutil.rmtree(workspace)
    (workspace / "src" / PACKAGE).mkdir(parents=True)
    digest = copy_sources(REPO_ROOT, workspace / "src" / PACKAGE)
    timings["copy"] = time.monotonic() - t0
    env = build_environment(colcon)
    cmake_args = ["-DBUILD_TESTING=ON", f"-DPython3_EXECUTABLE={sys.executable}",
                  f"-DOCC_AUDIT_ROS_PYTEST_ADDOPTS={COLCON_TEST_ADDOPTS}"]
    if venv_mode():
        cmake_args.append(f"-DCMAKE_PROJECT_INCLUDE={write_fixups(workspace / 'venv_fixups.cmake')}")
    t1 = time.monotonic()
    log(f"colcon build in {rel(workspace)} (log: {rel(workspace / 'colcon_build.log')})")
    run_colcon([str(colcon), "build", "--event-handlers", "console_direct+", "--packages-select", PACKAGE,
                "--cmake-args", *cmake_args], env, workspace, workspace / "colcon_build.log")
    timings["colcon build"] = time.monotonic() - t1
    log(f"colcon build: {timings['colcon build']:.1f} s")
    counts = None
    if run_tests:
        t2 = time.monotonic()
        log(f"colcon test (log: {rel(workspace / 'colcon_test.log')})")
        test_log = workspace / "colcon_test.log"
        with open(test_log, "w") as log_file:
            subprocess.run([str(colcon), "test", "--event-handlers", "console_direct+", "--packages-select",
                            PACKAGE], cwd=workspace, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        result = subprocess.run([str(colcon), "test-result", "--test-result-base", "build", "--verbose"],
                                cwd=workspace, env=env, capture_output=True, text=True)
        timings["colcon test"] = time.monotonic() - t2
        counts = test_results(workspace)
        log(f"colcon test: {timings['colcon test']:.1f} s; {counts['tests']} tests, {counts['failures']} failures, "
            f"{counts['errors']} errors, {counts['skipped']} skipped in {', '.join(counts['files']) or 'no file'}")
        if counts["tests"] == 0 or counts["failures"] or counts["errors"]:
            print(result.stdout[-6000:], file=sys.stderr)
            raise CheckError(f"colcon test: {counts['tests']} tests, failed: {counts['failed'][:20]}; "
                             f"log: {rel(test_log)}")
    (workspace / "source.sha256").write_text(digest)
    return {"timings": timings, "tests": counts}


@contextlib.contextmanager
def workspace_lock(workspace: Path):
    """One build or check of ``workspace`` at a time (two would delete each other's files)."""
    workspace.parent.mkdir(parents=True, exist_ok=True)
    with open(workspace.parent / f".{workspace.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0: built, tested and checked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE, help="workspace (recreated)")
    parser.add_argument("--colcon", type=Path, default=None,
                        help=f"colcon executable to use (default: installed into {rel(DEFAULT_COLCON_VENV)})")
    parser.add_argument("--no-colcon-test", action="store_true", help="skip `colcon test`")
    parser.add_argument("--check-only", action="store_true", help="only check the existing install tree")
    args = parser.parse_args(argv)
    workspace = args.workspace.resolve()
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    try:
        with workspace_lock(workspace):
            if not args.check_only:
                t0 = time.monotonic()
                colcon = args.colcon or ensure_colcon(DEFAULT_COLCON_VENV)
                timings["colcon install"] = time.monotonic() - t0
                timings.update(build_workspace(workspace, colcon, run_tests=not args.no_colcon_test)["timings"])
            t3 = time.monotonic()
            report, problems = check_install(workspace)
            timings["install check"] = time.monotonic() - t3
    except CheckError as error:
        log(f"ERROR: {error}")
        log(f"colcon check: FAILED after {time.monotonic() - t_start:.1f} s")
        return 1
    log(f"install tree {rel(install_prefix(workspace))}:")
    for line in report:
        print(f"  {line}", flush=True)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    log(f"times: {timing}; total {time.monotonic() - t_start:.1f} s")
    if problems:
        for problem in problems:
            log(f"PROBLEM: {problem}")
        log(f"colcon check: FAILED ({len(problems)} problems)")
        return 1
    log("colcon check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
