"""The README's Python blocks run, and every `python -m` entry point it names exists and
answers --help."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README, re.S))
def test_readme_python_blocks_run(block):
    exec(compile(block, "README.md", "exec"), {})


def test_readme_entry_points_answer_help():
    modules = sorted(set(re.findall(r"python -m ([\w.]+)", README)) - {"pip", "pytest"})
    assert {"experiments.train", "experiments.evaluate", "ambjax.data"} <= set(modules)
    for module in modules:
        args = [sys.executable, "-m", module] + (["describe", "--help"] if module == "ambjax.data"
                                                  else ["--help"])
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert result.returncode == 0, (module, result.stderr[-500:])
        assert "usage" in result.stdout.lower(), module
