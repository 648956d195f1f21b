"""Counting host syncs on the CPU: what would make the host wait for a GPU, counted by instrumentation.

``torch.cuda.set_sync_debug_mode`` only works on CUDA. This counts the same kinds of calls on any
device, so a CPU run tells how many times a step would stall a GPU:

- **read-backs**: ``Tensor.item``, ``__float__``, ``__int__``, ``__bool__``, ``__index__``,
  ``tolist``, ``numpy``, ``cpu`` -- a value the host needs now (on a GPU: wait for the queue).
- **data-dependent sizes**: ``nonzero``/``argwhere``/one-argument ``where``, ``unique``,
  ``unique_consecutive``, ``masked_select``, ``repeat_interleave`` with tensor repeats and no
  ``output_size``, and indexing (read or write) with a boolean tensor -- the output's shape depends
  on values, so the host must wait to size it.

Not seen by this method: host-to-device copies from pageable memory (synchronous on CUDA) and
syncs inside C++ kernels. Calls made inside a counted call (torch internals) are not counted
again. Sites are the file and line of the direct caller.

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
# (owner name, attribute) of data-dependent-size functions and methods.
DATA_DEPENDENT = (("torch", "nonzero"), ("Tensor", "nonzero"), ("torch", "argwhere"), ("Tensor", "argwhere"),
                  ("torch", "unique"), ("Tensor", "unique"), ("torch", "unique_consecutive"),
                  ("Tensor", "unique_consecutive"), ("torch", "masked_select"), ("Tensor", "masked_select"),
                  ("torch", "repeat_interleave"), ("Tensor", "repeat_interleave"), ("torch", "where"),
                  ("Tensor", "__getitem__"), ("Tensor", "__setitem__"))
# Read-backs of tensors that are on the host in a GPU run too: (path fragment, source text
# fragment or None). Adam's step counters; cameras, drawn on the CPU, read before they move.
HOST_SITES = (("torch/optim/", None), ("engine/render/cameras.py", None),
              ("engine/pipeline/", "azimuth_deg.tolist()"))


def _has_bool_tensor(index, torch) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.ndim > 0 for i in items)


def _data_dependent(owner: str, name: str, args, kwargs, torch) -> bool:
    """Whether this call of a DATA_DEPENDENT entry has a value-dependent output size."""
    if name in ("__getitem__", "__setitem__"):
        return len(args) > 1 and _has_bool_tensor(args[1], torch)
    if name == "where":
        return len(args) + len(kwargs) == 1
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if owner == "torch" and len(args) == 1 and "repeats" not in kwargs:
            repeats = args[0]  # torch.repeat_interleave(repeats): the one-argument form
        return (isinstance(repeats, torch.Tensor) and repeats.numel() > 1
                and kwargs.get("output_size") is None)
    return True


class SyncCounter:
    """``with counter.counting(): ...`` counts host syncs in the block (see the module docstring).

    ``install()`` once (it wraps torch functions for the life of the process; the wrappers cost
    Python overhead only, and count only inside ``counting``). ``read_backs`` / ``data_dependent``
    are Counters of ``"file:line call"``; ``device_read_backs()`` leaves out HOST_SITES."""

    def __init__(self):
        import torch

        self.torch = torch
        self.read_backs = collections.Counter()
        self.data_dependent = collections.Counter()
        self.host_sites: set[str] = set()
        self.on = False
        self._depth = 0
        self._installed = False
        self._originals = []

    def install(self) -> "SyncCounter":
        if self._installed:
            return self
        torch = self.torch
        for name in READ_BACKS:
            self._wrap(torch.Tensor, "Tensor", name, read_back=True)
        for owner_name, name in DATA_DEPENDENT:
            owner = torch.Tensor if owner_name == "Tensor" else torch
            self._wrap(owner, owner_name, name, read_back=False)
        self._installed = True
        return self

    def _wrap(self, owner, owner_name: str, name: str, read_back: bool) -> None:
        original = getattr(owner, name)
        counter, torch = self, self.torch

        def counted(*args, **kwargs):
            if not counter.on or counter._depth:
                return original(*args, **kwargs)
            counter._depth += 1
            try:
                if read_back or _data_dependent(owner_name, name, args, kwargs, torch):
                    frame = sys._getframe(1)
                    site = f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} {name}"
                    (counter.read_backs if read_back else counter.data_dependent)[site] += 1
                    if read_back and _is_host_site(frame.f_code.co_filename, frame.f_lineno):
                        counter.host_sites.add(site)
                return original(*args, **kwargs)
            finally:
                counter._depth -= 1

        counted.__name__ = getattr(original, "__name__", name)
        self._originals.append((owner, name, original))
        setattr(owner, name, counted)

    def uninstall(self) -> None:
        """Put torch's own functions back (timed code should not pay for the wrappers)."""
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()
        self._installed = False

    def reset(self) -> None:
        self.read_backs.clear()
        self.data_dependent.clear()
        self.host_sites.clear()

    def counting(self):
        counter = self

        class _Block:
            def __enter__(self):
                counter.on = True
                return counter

            def __exit__(self, *exc):
                counter.on = False
                return False

        return _Block()

    def device_read_backs(self) -> collections.Counter:
        return collections.Counter({k: v for k, v in self.read_backs.items() if k not in self.host_sites})

    def host_read_backs(self) -> collections.Counter:
        return collections.Counter({k: v for k, v in self.read_backs.items() if k in self.host_sites})


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
