"""onnxruntime execution providers for a device choice ("cpu", "cuda" or "auto")."""

from __future__ import annotations

import logging

from ..errors import EngineError

log = logging.getLogger(__name__)


def onnx_providers(device: str = "auto") -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"unknown device {device!r}; use cpu, cuda or auto", code="bad_device")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise EngineError("CUDA was asked for but this onnxruntime has no CUDA provider "
                          f"(available: {', '.join(available)})", code="no_cuda",
                          hint="install onnxruntime-gpu, or use --device cpu")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        preload_cuda_libraries(onnxruntime)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def preload_cuda_libraries(onnxruntime) -> None:
    """onnxruntime-gpu's CUDA provider needs CUDA and cuDNN libraries it does not ship: its
    documented way is ``onnxruntime.preload_dlls()`` after importing torch, which then takes
    torch's own (a cu130 torch has the CUDA 13 / cuDNN 9 that onnxruntime-gpu on the index is built
    for), else the nvidia-* wheels'. A failure here is logged: the session then says what it lacks."""
    import torch  # noqa: F401  (loads torch's CUDA libraries first)

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # an onnxruntime without it working: the session's own error says more
        log.warning("onnxruntime.preload_dlls() failed (%s); the CUDA provider may not load", exc)
