#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv if needed, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
# -p no:dash: open3d pulls in dash, whose pytest plugin only adds a deprecation warning
exec .venv/bin/python -m pytest -q -p no:dash test "$@"
