"""Reading an offline W&B run back without the network: the records of its run-<id>.wandb file.

The file is W&B's header (":W&B", a 2-byte magic, a version byte) and then a LevelDB-style log: 32 KiB blocks of
chunks, each a 7-byte header (CRC32 4, length 2, type 1: full, first, middle, last) and its bytes; the joined
chunks of a record are one `wandb_internal_pb2.Record`. wandb 0.31 has no Python reader of its own any more.
The service process appends to the file while a test reads it, so a record whose bytes are not all there yet (a
short last chunk, or a first chunk without its last) is left for the next read.
"""

from __future__ import annotations

import json
from pathlib import Path

HEADER = 7
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending, found = HEADER, b"", []
    while position + HEADER <= len(data):
        space = BLOCK - position % BLOCK
        if space < HEADER:  # the rest of a block too small for a chunk header is padding
            position += space
            continue
        length = int.from_bytes(data[position + 4:position + 6], "little")
        kind = data[position + 6]
        if kind == 0 and length == 0:
            break  # zero padding at the end
        if position + HEADER + length > len(data):
            break  # read while W&B's service was still appending: the last chunk is not all there yet
        chunk = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def history(path: Path) -> list[dict]:
    """The logged rows, each with its "_step"."""
    return [_items(record.history.item) for record in records(path) if record.WhichOneof("record_type") == "history"]


def summary(path: Path, wait_for: str | None = None, timeout_s: float = 120.0) -> dict:
    """The run's summary as W&B keeps it: the last value of every update. W&B's service process writes the file
    on its own schedule, so on a loaded machine the last records may land a moment after `finish()` returned:
    with `wait_for`, read again until that key is there (or the guard against a hang runs out)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        merged = {}
        for record in records(path):
            if record.WhichOneof("record_type") == "summary":
                merged.update(_items(record.summary.update))
        if wait_for is None or wait_for in merged or time.monotonic() > deadline:
            return merged
        time.sleep(0.5)


def run_file(run_dir: Path) -> Path:
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir}/wandb"
    return files[-1]
