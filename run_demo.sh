#!/usr/bin/env bash
# The main job (README): set up .venv if needed, then replay the embedded nuScenes keyframe through
# the perception node and write the output bag, BEV picture and relevancy overlays to output/demo/.
# Extra arguments go to occ_audit_demo (e.g. --clip-model /path/to/clip-vit-base-patch32, or
# --dataroot D --version V --scene NAME [--sweeps] to convert and replay a whole scene, --bag BAG for a
# scene bag converted before; several frames give an animated BEV GIF).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/occ_audit_demo "$@"
