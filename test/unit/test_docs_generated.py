"""The generated parameter tables of docs/nodes/*.md match the code (scripts/gen_node_docs.py --check)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_node_docs.py"


def _run(*args, cwd=REPO):
    # A separate interpreter: the script imports the bag nodes (rclpy), which this tier does not.
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_node_docs_parameter_tables_are_current():
    res = _run("--check")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"


def test_check_detects_a_stale_table_and_rewrite_fixes_it(tmp_path):
    """--check fails on a page whose table was edited by hand; the rewrite restores the code's table."""
    import shutil

    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / SCRIPT.name)
    shutil.copytree(REPO / "docs" / "nodes", tmp_path / "docs" / "nodes")
    page = tmp_path / "docs" / "nodes" / "bag_player.md"
    original = page.read_text(encoding="utf-8")
    assert "| `rate` |" in original
    page.write_text(original.replace("| `rate` |", "| `speed` |"), encoding="utf-8")

    stale = subprocess.run([sys.executable, str(tmp_path / "scripts" / SCRIPT.name), "--check"],
                           capture_output=True, text=True, timeout=300)
    assert stale.returncode == 1
    assert "docs/nodes/bag_player.md" in stale.stderr

    fixed = subprocess.run([sys.executable, str(tmp_path / "scripts" / SCRIPT.name)],
                           capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr
    assert page.read_text(encoding="utf-8") == original
