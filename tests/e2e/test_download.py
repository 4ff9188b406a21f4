"""Concurrent downloads: two jobs that prepare the same data folder at once both end with the dataset intact."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.cli import HANG_TIMEOUT
from tests.helpers.data import write_cifar10

# A child process: point torchvision's CIFAR-10 at the local archive, prepare and load through cifarbench's loader.
LOAD = r"""
import hashlib, json, sys
from torchvision import datasets
datasets.CIFAR10.url, datasets.CIFAR10.tgz_md5 = sys.argv[1], sys.argv[2]
from cifarbench.data.cifar import cifar10
splits = cifar10(sys.argv[3], download=True)
digest = hashlib.sha256(splits.train.images.numpy().tobytes() + splits.test.images.numpy().tobytes()).hexdigest()
print(json.dumps({"train": len(splits.train), "test": len(splits.test), "digest": digest}))
"""


def cifar_archive(tmp_path: Path) -> bytes:
    source = write_cifar10(tmp_path / "source", per_batch=200, test_size=200)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


class SlowArchiveServer(http.server.ThreadingHTTPServer):
    """Serves one archive on 127.0.0.1 in small, slow chunks, so two downloads overlap; counts whole downloads.

    torchvision first probes the URL for redirects with a GET that it closes early; that one is not counted.
    """

    def __init__(self, archive: bytes):
        self.archive, self.downloads = archive, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N802, N805 - the http.server API
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(self.archive)))
                handler.end_headers()
                try:
                    for start in range(0, len(self.archive), 32 * 1024):
                        handler.wfile.write(self.archive[start : start + 32 * 1024])
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    return
                self.downloads += 1

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def archive_server(tmp_path):
    server = SlowArchiveServer(cifar_archive(tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_two_processes_preparing_one_folder_both_load_it_intact(tmp_path, archive_server):
    url = f"http://127.0.0.1:{archive_server.server_address[1]}/cifar-10-python.tar.gz"
    md5 = hashlib.md5(archive_server.archive).hexdigest()
    root = tmp_path / "data"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-c", LOAD, url, md5, str(root)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)  # the second starts while the first is still downloading
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=HANG_TIMEOUT)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert (results[0]["train"], results[0]["test"]) == (1000, 200)
    # One download: the second process waited on the folder's lock and found the data in place.
    assert archive_server.downloads == 1
    # Nothing half-written is left beside the data.
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == ["cifar-10-batches-py"]
