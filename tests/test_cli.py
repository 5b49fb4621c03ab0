"""The attrkit command."""

import subprocess
import sys

from attrkit.cli import main


def test_plugins_lists_every_kind_with_plugin_and_version(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in ("method:", "gradients:", "projector:", "solver:", "grouper:", "ensemble:", "metric:"):
        assert kind in out
    assert "grad-dot" in out and "attrkit-methods (attrkit 0.1.0)" in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "attrkit", "plugins"], capture_output=True, text=True, check=True).stdout
    assert "gaussian" in out
