"""The package's top level: light to import, every public name there when used."""

import subprocess
import sys

import pytest

# in a fresh interpreter: what importing the package and its light modules pulls in
PROBE = """
import sys
import ambjax, ambjax.cli, ambjax.host_memory
print("jax" in sys.modules)
"""


def test_importing_ambjax_and_its_command_line_layer_imports_no_jax():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_every_public_name_and_submodule_resolves_when_used():
    import ambjax
    from ambjax.train import Trainer
    for name in ambjax.__all__:
        assert getattr(ambjax, name) is not None and name in dir(ambjax)
    assert ambjax.Trainer is Trainer and ambjax.train.Trainer is Trainer
    assert ambjax.convert.__name__ == "ambjax.convert"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        ambjax.nothing_here
