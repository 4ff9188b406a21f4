"""Entry points and the Hydra callbacks start without torch: `--help`, `--cfg` and a sweep's own process stay fast."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.cli import HANG_TIMEOUT

ENTRY_POINTS = ["cifarbench.train", "cifarbench.evaluate", "cifarbench.report", "cifarbench.cli.hydra_callbacks",
                "cifarbench.cli.sweep", "cifarbench.fileio", "cifarbench.config"]


def torch_loaded_after(code: str) -> bool:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_importing_an_entry_point_leaves_torch_out(module):
    assert not torch_loaded_after(f"import {module}")


def test_train_help_and_cfg_leave_torch_out():
    for args in (["--help"], ["--cfg", "job", "model=wrn_28_10"]):
        code = (
            "import contextlib, io, runpy\n"
            f"sys.argv = ['cifarbench.train', *{args!r}]\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    runpy.run_module('cifarbench.train', run_name='__main__')"
        )
        assert not torch_loaded_after(code), args
