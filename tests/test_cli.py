from __future__ import annotations

import subprocess
import sys

import pytest

from manualbp.cli import main


def test_help_lists_the_project(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "manualbp" in capsys.readouterr().out


def test_console_script_module_runs():
    result = subprocess.run([sys.executable, "-c", "from manualbp.cli import main; raise SystemExit(main([]))"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: manualbp" in result.stdout
