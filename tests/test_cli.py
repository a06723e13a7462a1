"""The command line's output when it goes to a log or a pipe."""

import os
import subprocess
import sys


def test_piped_tables_are_not_wrapped_at_80_columns():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "codekd", "bench-model", "--help"], capture_output=True, text=True,
                         env=env).stdout
    assert any(len(line) > 80 for line in out.splitlines())
    methods = subprocess.run([sys.executable, "-m", "codekd", "methods"], capture_output=True, text=True,
                             env=env).stdout
    row = next(line for line in methods.splitlines() if line.startswith("│ kd "))
    assert "temperature=10.0, alpha=1.0, t_squared=False" in row  # the defaults stay on one line
