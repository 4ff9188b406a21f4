"""Fixtures only (helpers live in tests/helpers/): tiny CIFAR-format data on disk, the toy model's config dir,
torch's process-wide settings restored after each test, and the order and skips of the collected tests."""

from __future__ import annotations

import os

# One thread per test process (and for the subprocesses tests start): pytest-xdist runs one process per core,
# and two multi-threaded torch processes on the same cores spend their time waiting for each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.data import write_cifar10  # noqa: E402
from tests.helpers.faulty import FAULT_MODELS  # noqa: E402
from tests.helpers.paths import REPO  # noqa: E402
from tests.helpers.runs import (  # noqa: E402
    SMALL,
    reference_run,  # noqa: E402
)

torch.set_num_threads(1)

# The suite's longest test: it sorts first, so that it starts first and the other worker runs the rest beside it.
FIRST = "test_accuracy_fashion_mnist.py"


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    return write_cifar10(tmp_path / "data")


def pytest_collection_modifyitems(config, items):
    """The Fashion-MNIST accuracy test goes first; `cuda` tests skip cleanly on a machine without CUDA (such as
    CI's)."""
    items.sort(key=lambda item: item.path.name != FIRST)  # stable: everything else keeps its order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `python -m pytest -m cuda` on one)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture
def toy_conf(tmp_path, monkeypatch) -> Path:
    """A config dir for Hydra's search path with a BatchNorm-free model (tests/helpers/toy_models.py), importable
    here too, so that per-rank and global batches, or accumulated and whole ones, give the same gradients."""
    conf = tmp_path / "extra_conf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny_conv.yaml").write_text(
        "_target_: tests.helpers.toy_models.TinyConvNet\nnum_classes: ${dataset.num_classes}\n"
        "in_channels: ${dataset.in_channels}\n"
    )
    monkeypatch.syspath_prepend(str(REPO))
    return conf.parent


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Deterministic mode and thread counts are process-wide; keep one test's settings out of the next."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fault_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault_models")
    (folder / "cifarbench_fault_models.py").write_text(FAULT_MODELS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """CIFAR-10 files with 100 training and 40 test images (read only: one per worker process)."""
    return write_cifar10(tmp_path_factory.mktemp("cifar") / "data", per_batch=20, test_size=40)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_cifar) -> Path:
    """checkpoints/ of a one-epoch resnet20 run on (tiny) CIFAR-10 (read only: trained once per worker process, not
    once per module that uses it)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    reference_run(SMALL[:1] + SMALL[4:] + [f"paths.data_dir={tiny_cifar}", "dataset.source.download=false",
                                          "dataset.num_workers=0", "trainer.epochs=1"], run_dir)
    return run_dir / "checkpoints"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    batches of a few images gain nothing from threads, and on a busy shared CPU OpenMP's spin-waiting makes them
    several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
