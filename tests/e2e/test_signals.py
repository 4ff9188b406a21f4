"""Signals to a training subprocess: a second SIGTERM exits at once; a kill during a checkpoint write leaves a
complete last.pt."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import torch

from cifarbench import checkpoint
from tests.helpers.cli import TIMEOUT, child_env, finish, start_training, wait_until
from tests.helpers.faulty import FAULTY
from tests.helpers.runs import SMALL


def test_second_sigterm_exits_at_once(tmp_path, fault_models):
    """The first SIGTERM asks for a clean stop after the step; a second one during that step ends the run now.

    The first signal comes during step 2 of epoch 2, which then stays busy for two minutes: only an immediate exit
    on the second signal gets the run out before that (without the mid-epoch last.pt a clean stop would write).
    """
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "run.log"
    args = SMALL + FAULTY + ["dataset.source.train_size=48", "+model.sigterm_at_step=5", "trainer.epochs=3"]
    proc = start_training(args, run_dir, log, extra_path=fault_models)
    wait_until(lambda: "SIGTERM received" in log.read_text(), proc, "the first SIGTERM was acknowledged", log)
    time.sleep(2.5)  # past the repeat window: a signal within it is the same request delivered twice (srun+torchrun)
    proc.send_signal(signal.SIGTERM)
    status = finish(proc)
    output = log.read_text()
    assert status in (128 + signal.SIGTERM, -signal.SIGTERM), f"exit status {status}:\n{output}"
    assert "Traceback" not in output
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (1, 0), "the run took the slow path and saved mid-epoch"


# ============================================================================================ atomic writes
ATOMIC_CHILD = '''
import io, sys, time
import torch
from cifarbench.checkpoint import save_checkpoint

path, generation, tear = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tear"
real_save = torch.save

def torn_save(obj, f):
    """Write half of the bytes, make them visible, announce it, and wait to be killed."""
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    print("torn", flush=True)
    time.sleep(600)

while True:
    if tear and generation % 1000 == 1:
        torch.save = torn_save
    payload = torch.full((2_000_000,), float(generation))
    save_checkpoint(path, {"kind": "test", "generation": generation, "payload": payload})
    torch.save = real_save
    print(generation, flush=True)
    generation += 1
'''


def test_kill_during_checkpoint_write_keeps_a_complete_last_pt(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(ATOMIC_CHILD)
    folder = tmp_path / "checkpoints"
    path = folder / "last.pt"
    rng = random.Random(7)
    killed_mid_write = 0
    for round_ in range(4):
        # Rounds 0 and 1 are killed while a half-written temp file exists (deterministically); the others at a
        # random moment of a loop of 8 MB saves, the real write path throughout.
        tear = round_ < 2
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(1000 * round_), "tear" if tear else "loop"],
            cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, text=True,
        )
        try:
            complete = [int(proc.stdout.readline())]  # one complete save of this round
            if tear:
                assert proc.stdout.readline().strip() == "torn"
            else:
                time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.kill()
            rest = proc.communicate(timeout=TIMEOUT)[0]
        complete += [int(line) for line in rest.split() if line.isdigit()]

        leftovers = [p for p in folder.iterdir() if p.name != "last.pt"]
        for leftover in leftovers:  # a temp file may stay behind, never under the checkpoint's own name
            assert leftover.name.startswith(".last.pt.") and leftover.name.endswith(".tmp"), leftover.name
            leftover.unlink()
        killed_mid_write += bool(leftovers)

        saved = checkpoint.load_checkpoint(path)  # it loads: never torn
        generation = saved["generation"]
        assert torch.equal(saved["payload"], torch.full((2_000_000,), float(generation))), "mixed content"
        # The newest completed save, or one newer if the kill fell between its rename and its print.
        assert generation in (complete[-1], complete[-1] + 1), (generation, complete)
        if tear:
            assert generation == complete[-1], "the torn write replaced last.pt"
    assert killed_mid_write >= 2, "no kill landed inside a write: the test tested nothing"
