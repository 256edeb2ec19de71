"""tests/conftest.py's restore_globals: a test that leaks process state cannot reach the next one."""
from pathlib import Path

pytest_plugins = ["pytester"]

LEAKY = '''
import os, random
import numpy as np
import torch

def test_a_leaks_everything(tmp_path):
    os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    os.environ.pop("HOME", None)
    os.chdir(tmp_path)
    torch.set_num_threads(1)
    random.seed(1); np.random.seed(1); torch.manual_seed(1)

def test_b_sees_nothing_of_it():
    assert "OPENBLAS_CORETYPE" not in os.environ
    assert "HOME" in os.environ
    assert os.getcwd() == START_CWD
    assert torch.get_num_threads() == START_THREADS
    assert random.random() == START_RANDOM
    assert np.random.random() == START_NP
    assert torch.rand(1).item() == START_TORCH
'''


def test_state_a_test_leaks_is_restored(pytester, monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-home")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the conftest imports helpers.budget
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    body = LEAKY.replace("START_CWD", repr(str(pytester.path)))
    body = body.replace("START_THREADS", "THREADS").replace("START_RANDOM", "R0")
    body = body.replace("START_NP", "N0").replace("START_TORCH", "T0")
    # the state at collection, which test_a changes and test_b must find again
    prelude = '''
import os, random
import numpy as np
import torch
THREADS = torch.get_num_threads()
_s = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
R0, N0, T0 = random.random(), np.random.random(), torch.rand(1).item()
random.setstate(_s[0]); np.random.set_state(_s[1]); torch.random.set_rng_state(_s[2])
'''
    pytester.makepyfile(test_leak=prelude + body)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-q")
    result.assert_outcomes(passed=2)
