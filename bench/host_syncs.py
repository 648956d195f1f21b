"""Counting host syncs on the CPU: what would make the host wait for a GPU, counted by instrumentation.

``torch.cuda.set_sync_debug_mode`` only works on CUDA. This counts the same kinds of calls on any
device, so a CPU run tells how many times a step would stall a GPU:

- **read-backs**: ``Tensor.item``, ``__float__``, ``__int__``, ``__bool__``, ``__index__``,
  ``tolist``, ``numpy``, ``cpu`` -- a value the host needs now (on a GPU: wait for the queue).
- **data-dependent sizes**: ``nonzero``/``argwhere``/one-argument ``where``, ``unique``,
  ``unique_consecutive``, ``masked_select``, ``repeat_interleave`` with tensor repeats and no
  ``output_size``, and indexing (read or write) with a boolean tensor -- the output's shape depends
  on values, so the host must wait to size it.

Counted through a ``TorchFunctionMode`` (every torch function and tensor method passes through
it while counting; nothing is patched). Not seen by this method: host-to-device copies from
pageable memory (synchronous on CUDA) and syncs inside C++ kernels. Calls made inside a counted
call (torch internals) are not counted again. Sites are the file and line of the caller.

Some read-backs touch tensors that stay on the host even in a GPU run (Adam's ``step`` counters,
``capturable=False``; cameras drawn on the CPU before they are moved): ``HOST_SITES`` names them
so reports can separate them from device syncs.
"""

from __future__ import annotations

import collections
import linecache
import sys
from pathlib import Path

READ_BACKS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu")
DATA_DEPENDENT = ("nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "repeat_interleave",
                  "where", "__getitem__", "__setitem__")
# Read-backs of tensors that are on the host in a GPU run too: (path fragment, source text
# fragment or None). Adam's step counters; cameras, drawn on the CPU, read before they move.
HOST_SITES = (("torch/optim/", None), ("engine/render/cameras.py", None),
              ("engine/pipeline/", "azimuth_deg.tolist()"))
# Frames between the caller and the counter (torch's Python wrappers that dispatch to modes).
_PASS_THROUGH = ("torch/overrides.py", "torch/functional.py", "torch/_tensor.py", "torch/_jit_internal.py",
                 "torch/utils/_contextlib.py", "torch/_compile.py", "bench/host_syncs.py")


def _has_bool_tensor(index, torch) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.ndim > 0 for i in items)


def _data_dependent(name: str, args, kwargs, torch) -> bool:
    """Whether this call of a DATA_DEPENDENT function has a value-dependent output size."""
    if name in ("__getitem__", "__setitem__"):
        return len(args) > 1 and _has_bool_tensor(args[1], torch)
    if name == "where":
        return len(args) + len(kwargs) == 1
    if name == "repeat_interleave":
        # torch.repeat_interleave(repeats) (one argument) or (input, repeats, ...)
        repeats = args[0] if len(args) == 1 and "repeats" not in kwargs else (
            args[1] if len(args) > 1 else kwargs.get("repeats"))
        return isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None
    return True


class SyncCounter:
    """``with counter.counting(): ...`` counts host syncs in the block (see the module docstring).

    Counting runs through a ``TorchFunctionMode``: torch's own classes are not touched, and calls
    made inside a counted call (torch internals) are not seen. ``read_backs`` / ``data_dependent``
    are Counters of ``"file:line call"``; ``device_read_backs()`` leaves out HOST_SITES.
    ``install``/``uninstall`` are kept for callers written against the former patching version."""

    def __init__(self):
        import torch

        self.torch = torch
        self.read_backs = collections.Counter()
        self.data_dependent = collections.Counter()
        self.host_sites: set[str] = set()

    def install(self) -> "SyncCounter":
        return self

    def uninstall(self) -> None:
        pass

    def reset(self) -> None:
        self.read_backs.clear()
        self.data_dependent.clear()
        self.host_sites.clear()

    def counting(self):
        from torch.overrides import TorchFunctionMode

        counter, torch = self, self.torch

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", "")
                if name in READ_BACKS or (name in DATA_DEPENDENT and _data_dependent(name, args, kwargs, torch)):
                    counter._record(name, name in READ_BACKS)
                if name == "backward" and func is torch.Tensor.backward:
                    return _backward_counted(self, *args, **kwargs)
                return func(*args, **kwargs)

        return _Mode()

    def _record(self, name: str, read_back: bool) -> None:
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.replace("\\", "/").endswith(_PASS_THROUGH):
            frame = frame.f_back
        if frame is None:
            return
        site = f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} {name}"
        (self.read_backs if read_back else self.data_dependent)[site] += 1
        if read_back and _is_host_site(frame.f_code.co_filename, frame.f_lineno):
            self.host_sites.add(site)

    def device_read_backs(self) -> collections.Counter:
        return collections.Counter({k: v for k, v in self.read_backs.items() if k not in self.host_sites})

    def host_read_backs(self) -> collections.Counter:
        return collections.Counter({k: v for k, v in self.read_backs.items() if k in self.host_sites})


def _backward_counted(mode, tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    """``tensor.backward(...)`` with ``mode`` kept on: the autograd engine carries the mode into the
    backward pass, so the Python code of custom autograd Functions is counted too (a mode is off
    while its own ``__torch_function__`` runs, which would hide all of it). torch.autograd.backward's
    own steps, minus its re-dispatch to the mode."""
    import torch
    from torch.autograd import _make_grads
    from torch.autograd.graph import _engine_run_backward

    tensors = (tensor,)
    inputs = () if inputs is None else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs))
    with mode:
        grads = _make_grads(tensors, (gradient,), is_grads_batched=False)
        _engine_run_backward(tensors, grads, create_graph if retain_graph is None else retain_graph, create_graph,
                             inputs, allow_unreachable=True, accumulate_grad=True)


def _is_host_site(filename: str, lineno: int) -> bool:
    path = filename.replace("\\", "/")
    for fragment, text in HOST_SITES:
        if fragment in path and (text is None or text in linecache.getline(filename, lineno)):
            return True
    return False


def _short(filename: str) -> str:
    """A path from the repository (engine/..., bench/...) or from torch (torch/...)."""
    parts = Path(filename).parts
    for anchor in ("engine", "bench", "tests", "torch"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor):])
    return Path(filename).name
