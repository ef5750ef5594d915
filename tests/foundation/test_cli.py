import json
import subprocess
import sys

from fastvit.cli import main


def test_info_reports_build_and_backends(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"] and info["versions"]["triton"]
    assert isinstance(info["build"]["cpp"], dict) and info["build"]["cpp"]["openmp_max_threads"] >= 1
    assert "torch" in info["backends"]["attention"]


def test_console_script_and_errors():
    out = subprocess.run([sys.executable, "-m", "fastvit.cli", "info"], capture_output=True, text=True, check=True)
    assert "build:" in out.stdout and "_C:" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fastvit.cli", "bench", "nothing"], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected one of kernels, step, data" in bad.stderr
