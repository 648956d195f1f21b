"""Checked option values for the engine's command lines (standard library only).

Each ``argparse`` type here refuses a value with a message that names what is wrong and what to
use instead, so a bad number never reaches the code as a traceback, a do-nothing run or a
MemoryError. argparse prefixes the option name and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import re


def whole_number(low: int, high: int, example: int):
    """A type for an integer option in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (e.g. {example})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low}..{high} (e.g. {example})")
        return value

    return parse


def real_number(low: float, high: float, example: float, *, low_open: bool = False):
    """A type for a finite float option in [low, high] (``low_open``: low itself excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. {example})") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number (e.g. {example})")
        if value > high or value < low or (low_open and value == low):
            bound = f"more than {low}" if low_open else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: use {bound}, at most {high:g} (e.g. {example})")
        return value

    return parse


def multiple_of(step: int, low: int, high: int, example: int):
    """A type for an integer in [low, high] that is a multiple of ``step`` (image sides)."""
    base = whole_number(low, high, example)

    def parse(text: str) -> int:
        value = base(text)
        if value % step:
            raise argparse.ArgumentTypeError(f"{value} is not a multiple of {step} (e.g. {example})")
        return value

    return parse


_DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d{1,2}|mps)")


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (checked against the hardware later)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps")
    return text


def check_device_available(device: str | None, option: str = "--device") -> None:
    """Raise :class:`EngineError` (code ``device_unavailable``) when the device cannot be used here.
    Imports torch: call it from a command's ``run``, not at import time."""
    if device in (None, "auto", "cpu"):
        return
    import torch

    from .errors import EngineError

    if device == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        if not ok:
            raise EngineError(f"{option} mps: this Python's torch has no Apple GPU (MPS) support",
                              code="device_unavailable", hint=f"use {option} cpu or {option} auto")
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise EngineError(f"{option} {device}: torch {torch.__version__} here is {build}",
                          code="device_unavailable",
                          hint=f"use {option} cpu (slow) or install a CUDA build of torch (docs/install.md)")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise EngineError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) are visible",
                          code="device_unavailable", hint=f"use {option} cuda:0 .. cuda:{torch.cuda.device_count() - 1}")


def read_list_file(path, what: str = "list") -> list[str]:
    """Entries of a list file, byte-exact: NUL-separated if the file holds a NUL, else one per
    line. Names that are not valid UTF-8 come back surrogate-escaped (``os.fsdecode``), so they
    reach the file system unchanged. For user values that must never be parsed as options."""
    import os

    from .errors import EngineError

    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise EngineError(f"cannot read the {what} file {path} ({exc.strerror or exc})", code="bad_list_file",
                          hint="pass an existing text file with one entry per line") from None
    parts = data.split(b"\0") if b"\0" in data else data.splitlines()
    return [os.fsdecode(part) for part in parts if part.strip()]
