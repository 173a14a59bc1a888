"""The README's two commands use the environment scripts/setup_env.sh made, wherever IMPLANTFL_VENV puts it."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("script", "tool"), [("main.sh", "implantfl-sim"), ("test.sh", "python")])
def test_the_scripts_run_the_tools_of_the_environment_setup_made(tmp_path, script, tool):
    # Prepare: an environment elsewhere that setup_env.sh considers up to date, with stand-in tools
    venv = tmp_path / "elsewhere"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "implantfl-sim"):
        exe = venv / "bin" / name
        exe.write_text(f'#!/usr/bin/env bash\necho "{name} from elsewhere: $*"\n')
        exe.chmod(0o755)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / ".implantfl-installed").write_text(f"{digest} torch==2.13.0 dev\n")
    env = {**os.environ, "IMPLANTFL_VENV": str(venv), "IMPLANTFL_OUT": str(tmp_path / "run")}
    env.pop("TORCH_SPEC", None)
    # Execute
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), "--flag"], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    # Assert: no "No such file or directory" for .venv; the tool of that environment ran
    assert out.returncode == 0, out.stderr
    assert f"{tool} from elsewhere:" in out.stdout and "--flag" in out.stdout
