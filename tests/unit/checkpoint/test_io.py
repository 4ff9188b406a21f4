"""cifarbench.checkpoint.io: missing, truncated, foreign, corrupt and newer checkpoints."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import torch

from cifarbench import checkpoint
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.errors import CheckpointError
from tests.helpers.runs import resume_error


def test_random_bytes_are_called_corrupt_not_unsafe(tmp_path):
    """Garbage fails inside the unpickler in many ways (bad opcodes, empty stacks, unknown memo keys); each must be
    one clear CheckpointError that calls the file corrupt, never "unsafe" and never a traceback."""
    garbage = tmp_path / "best.pt"
    for seed in range(200):
        garbage.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError) as caught:
            checkpoint.load_checkpoint(garbage)
        message = str(caught.value)
        assert "corrupt" in message and str(garbage) in message, (seed, message)
        assert "could run code" not in message and "refused" not in message, (seed, message)


def test_checkpoint_missing(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "nope.pt")) + ".*does not exist"):
        evaluate_checkpoint(tmp_path / "nope.pt", device="cpu")


def test_not_a_cifarbench_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(10, 64)}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match=re.escape(str(foreign)) + ".*not a cifarbench checkpoint"):
        evaluate_checkpoint(foreign, device="cpu")
    message = resume_error(foreign, [], tmp_path)
    assert "not a cifarbench checkpoint" in message and "last.pt" in message


def test_truncated_checkpoint(tmp_path, trained):
    torn = tmp_path / "torn.pt"
    torn.write_bytes((trained / "best.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError) as caught:
        evaluate_checkpoint(torn, device="cpu")
    message = str(caught.value)
    assert str(torn) in message and "truncated" in message and "\n" not in message, message


def test_a_checkpoint_from_a_newer_cifarbench_is_refused(tmp_path):
    from cifarbench.checkpoint import io as checkpoint
    from cifarbench.errors import CheckpointError

    checkpoint.save_checkpoint(tmp_path / "next.pt", {"kind": "best", "version": checkpoint.VERSION + 1})
    with pytest.raises(CheckpointError, match="newer cifarbench"):
        checkpoint.load_checkpoint(tmp_path / "next.pt")
    checkpoint.save_checkpoint(tmp_path / "now.pt", {"kind": "best"})
    assert checkpoint.load_checkpoint(tmp_path / "now.pt")["version"] == checkpoint.VERSION


def _full_disk_flush(monkeypatch):
    """/dev/full fails every write with ENOSPC, as a full disk does: Python's flush raises OSError."""
    from cifarbench import fileio

    def full_disk(fd, mode):
        os.close(fd)
        return open("/dev/full", mode)

    monkeypatch.setattr(fileio.os, "fdopen", full_disk)


def _full_disk_in_torch_writer(monkeypatch):
    """With a few KB left, the buffered tail fits and torch's C++ zip writer is the one to fail, on positions
    (the message below is what it said here when the disk filled)."""

    def torch_save(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 666560 vs 666456")

    monkeypatch.setattr(checkpoint.io.torch, "save", torch_save)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("fill", [_full_disk_flush, _full_disk_in_torch_writer], ids=["flush", "zip writer"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_previous_checkpoint_survives(tmp_path, monkeypatch, fill):
    target = tmp_path / "last.pt"
    checkpoint.save_checkpoint(target, {"kind": "last", "epoch": 3})
    before = target.read_bytes()
    fill(monkeypatch)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.save_checkpoint(target, {"kind": "last", "epoch": 4, "weights": torch.zeros(1_000_000)})
    message = str(caught.value)
    assert str(target) in message and "MiB free" in message and "previous one is kept" in message, message
    assert "\n" not in message and "hydra.run.dir" in message
    monkeypatch.undo()
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_checkpoint_that_cannot_be_pickled_still_says_why(tmp_path):
    """Only write failures become "could not write": torch's own refusals keep their message."""
    weights = torch.zeros(4)
    with pytest.raises(RuntimeError, match="view the same data as different types"):
        checkpoint.save_checkpoint(tmp_path / "x.pt", {"a": weights, "b": weights.view(torch.int32)})
    assert list(tmp_path.iterdir()) == []
