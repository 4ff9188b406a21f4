"""HostTraffic: records what makes the host wait for an accelerator, seen through PyTorch's dispatcher on any
device (the CPU included), so tests can hold the data path to "no waits per batch" without a GPU.

On CUDA the batched ops only queue kernels, so the next batch is augmented while the training step runs, unless
something makes the host wait for the GPU: a tensor built from Python values, a value read back, or an output whose
size depends on the values.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ATEN = torch.ops.aten
_FROM_PYTHON = {_ATEN.lift_fresh, _ATEN.lift_fresh_copy}  # what torch.tensor / torch.as_tensor of Python data run
_READS = {_ATEN._local_scalar_dense, _ATEN.equal, _ATEN.is_nonzero}  # .item(), float(t), bool(t), torch.equal
_SHAPE_FROM_VALUES = {  # outputs sized by the values: CUDA reads something back first
    _ATEN.nonzero, _ATEN.masked_select, _ATEN.bincount, _ATEN._unique, _ATEN._unique2, _ATEN.unique_dim,
    _ATEN.unique_consecutive,
}  # fmt: skip
_INDEXING = {_ATEN.index, _ATEN.index_put, _ATEN.index_put_, _ATEN._index_put_impl_}
_COPIES = {_ATEN._to_copy, _ATEN.copy_, _ATEN._copy_from, _ATEN._copy_from_and_resize}


class HostTraffic(TorchDispatchMode):
    """Records every operation that makes the host wait for an accelerator, as (kind, what) in `events`.

    * "from_python": a tensor built from Python values (torch.tensor, torch.as_tensor); on a GPU a blocking copy
      that waits for all queued work.
    * "read": a value read back (.item(), float(t), bool(t), torch.equal, .tolist(), .numpy(), a copy to the
      CPU), or an op whose output size depends on the values (nonzero, boolean-mask indexing, bincount, unique).
    * "transfer": a copy from the CPU to another device, e.g. a table moved to the device per batch. Run the ops
      on "meta" (or CUDA) to see those: on the CPU, .to("cpu") is no copy at all.
    """

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self._reading = False

    def of(self, kind: str) -> list[str]:
        return [what for k, what in self.events if k == kind]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._reading:  # inside a counted .tolist() / .numpy()
            return out
        packet = func.overloadpacket
        if packet in _FROM_PYTHON:
            self.events.append(("from_python", str(func)))
        elif packet in _READS or packet in _SHAPE_FROM_VALUES or func == _ATEN.repeat_interleave.Tensor:
            self.events.append(("read", str(func)))
        elif packet in _INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None
        ):
            self.events.append(("read", f"{func} with a boolean mask"))
        elif packet in _COPIES:
            source, target = args[0], out
            if packet in (_ATEN.copy_, _ATEN._copy_from):
                source, target = args[1], args[0]
            if isinstance(source, torch.Tensor) and source.device != target.device:
                kind = "read" if target.device.type == "cpu" else "transfer"
                self.events.append((kind, f"{func} {source.device} -> {target.device}"))
        return out

    def __enter__(self):
        self._saved = {name: torch.Tensor.__dict__.get(name) for name in ("tolist", "numpy")}
        for name in self._saved:
            setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, saved in self._saved.items():
            if saved is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, saved)
        return super().__exit__(*exc)

    def _counted(self, name, method):
        def counted(tensor, *args, **kwargs):
            self.events.append(("read", f"Tensor.{name}"))
            self._reading = True
            try:
                return method(tensor, *args, **kwargs)
            finally:
                self._reading = False

        return counted
