"""The README's Python blocks run, and every `python -m` entry point it names exists and
answers --help."""

import os
import re
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README, re.S))
def test_readme_python_blocks_run(block):
    exec(compile(block, "README.md", "exec"), {})


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_readme_entry_points_answer_help(capsys, monkeypatch):
    """Every `python -m` module the README names runs as __main__ and answers --help (in this
    process, through runpy: the same code path as `python -m`, without a new interpreter)."""
    modules = sorted(set(re.findall(r"python -m ([\w.]+)", README)) - {"pip", "pytest"})
    assert {"experiments.train", "experiments.evaluate", "experiments.ablate",
            "experiments.features", "ambjax.data"} <= set(modules)
    for module in modules:
        args = ["describe", "--help"] if module == "ambjax.data" else ["--help"]
        monkeypatch.setattr(sys, "argv", [module] + args)
        with pytest.raises(SystemExit) as done:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        assert done.value.code in (0, None), module
        assert "usage" in capsys.readouterr().out.lower(), module
