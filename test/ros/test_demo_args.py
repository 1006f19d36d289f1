"""occ_audit_demo checks every argument before converting data or loading a model: one line, no traceback."""

import os
import subprocess
import sys

import pytest

from occ_audit_ros import paths
from occ_audit_ros.tools import demo


def _bad_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("perception_node:\n  ros__parameters:\n    labels: [car\n")
    return f


@pytest.mark.parametrize("argv, code, needle", [
    (["--rate", "-1"], 2, "--rate must be >= 0"),
    (["--rate", "nan"], 2, "--rate must be >= 0"),
    (["--timeout", "0"], 2, "--timeout must be > 0"),
    (["--cameras", "CAM_FRONT,CAM_NOPE"], 2, "unknown ['CAM_NOPE']"),
    (["--cameras", "CAM_FRONT,CAM_FRONT"], 2, "distinct"),
    (["--cameras", ","], 2, "--cameras"),
    (["--hidden-query", "car;behind"], 2, "TARGET;RELATION;REFERENCE"),
    (["--dataroot", "/nonexistent/nuscenes"], 1, "/nonexistent/nuscenes"),
    (["--bag", "/nonexistent/bag"], 1, "/nonexistent/bag"),
    (["--params-file", "/nonexistent/p.yaml"], 1, "/nonexistent/p.yaml"),
])
def test_bad_arguments_fail_before_anything_runs(argv, code, needle, tmp_path, capsys):
    out = tmp_path / "out"
    if code == 2:
        with pytest.raises(SystemExit) as exc:
            demo.main(["--clip-model", "random-tiny", "--output", str(out), *argv])
        assert exc.value.code == 2
    else:
        assert demo.main(["--clip-model", "random-tiny", "--output", str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()  # nothing converted or written


def test_malformed_params_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = _bad_yaml(tmp_path)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--clip-model", "random-tiny", "--output", str(tmp_path / "o"), "--params-file", str(bad)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and str(bad) in err and "not valid YAML (line 4)" in err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("perception_node:\n  ros__parameters:\n    sync: {slop_s: fast}\n")
    with pytest.raises(SystemExit):
        demo.main(["--clip-model", "random-tiny", "--params-file", str(paths.resource("config/perception.yaml")),
                   "--params-file", str(wrong)])
    assert "sync.slop_s" in capsys.readouterr().err


def test_cli_process_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(paths.REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "occ_audit_ros.tools.demo", "--rate", "-2", "--output",
                          str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "occ_audit_demo: error: --rate must be >= 0 (0 = as fast as possible), got -2.0"
