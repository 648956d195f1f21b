"""The NVIDIA driver / GPU -> PyTorch CUDA build mapping Install Engine uses (no GPU needed: the
driver's answers are nvidia-smi's real output formats, given as text)."""

from __future__ import annotations

import subprocess

import pytest

from engine.cuda_wheels import Gpu, choose_wheel, parse_nvidia_smi, query_gpus

# nvidia-smi --query-gpu=driver_version,name,compute_cap,memory.total --format=csv,noheader,nounits
SMI_TWO_GPUS = "580.82.07, NVIDIA H100 80GB HBM3, 9.0, 81559\n580.82.07, NVIDIA GeForce RTX 3060, 8.6, 12288\n"


def gpu(driver: str, cc=(8, 6), name="NVIDIA GeForce RTX 3060") -> list[Gpu]:
    return [Gpu(name=name, driver=driver, compute_capability=cc, memory_mib=12288)]


def test_parse_nvidia_smi_rows_and_old_drivers_without_compute_cap():
    gpus = parse_nvidia_smi(SMI_TWO_GPUS)
    assert gpus[0] == Gpu("NVIDIA H100 80GB HBM3", "580.82.07", (9, 0), 81559)
    assert gpus[1].compute_capability == (8, 6)
    old = parse_nvidia_smi("470.199.02, Tesla K80\n")
    assert old == [Gpu("Tesla K80", "470.199.02", None, None)]
    assert parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n") == []


# NVIDIA's minor-version compatibility: every CUDA 12.x build runs from CUDA 12.0 GA's driver
# (525.60.13 Linux / 527.41 Windows), every 13.x build from the 580 branch (docs/install.md).
@pytest.mark.parametrize("driver, cc, platform, variant", [
    ("580.82.07", (9, 0), "linux", "cu130"),  # H100 on a 580 driver: CUDA 13
    ("580.65.06", (8, 6), "linux", "cu130"),  # exactly CUDA 13.0 GA's driver
    ("580.65.05", (8, 6), "linux", "cu129"),  # one below: the newest 12.x build
    ("575.51.02", (8, 9), "linux", "cu129"),  # below 12.9's own toolkit driver: minor-version compatible
    ("550.54.14", (8, 0), "linux", "cu129"),
    ("525.60.13", (7, 5), "linux", "cu129"),  # the CUDA 12 floor
    ("525.60.12", (7, 5), "linux", "cpu"),
    ("470.199.02", (8, 6), "linux", "cpu"),
    ("580.88", (8, 9), "win32", "cu130"),  # Windows: the 580 branch
    ("575.64", (8, 9), "win32", "cu129"),
    ("527.41", (8, 6), "win32", "cu129"),  # Windows' CUDA 12 floor
    ("527.37", (8, 6), "win32", "cpu"),
    ("580.97", (6, 1), "linux", "cu126"),  # Pascal (GTX 1080): CUDA 13 and the 12.9 build dropped it
    ("525.60.13", (6, 1), "linux", "cu126"),
    ("580.97", (7, 0), "win32", "cu126"),  # Volta
    ("580.97", (12, 0), "linux", "cu130"),  # Blackwell (RTX 5090)
    ("576.57", (12, 0), "win32", "cu129"),
    ("570.86.16", (12, 0), "linux", "cu129"),  # an RTX 50xx on R570: the 12.9 build has its SASS
    ("580.97", (3, 7), "linux", "cpu"),  # Kepler
])
def test_driver_and_gpu_choose_the_newest_build_they_run(driver, cc, platform, variant):
    choice = choose_wheel(gpu(driver, cc), platform=platform)
    assert choice.variant == variant, choice.reason
    assert choice.index_url.endswith("/" + variant)
    assert choice.onnxruntime_gpu == (variant == "cu130")  # onnxruntime-gpu on the index is a CUDA 13 build
    if variant == "cpu":
        assert "CPU build" in choice.reason and ("update the NVIDIA driver" in choice.reason or "too old" in choice.reason)
    else:
        assert driver in choice.reason and variant in choice.reason


def test_no_driver_or_macos_falls_back_to_cpu_with_a_reason():
    assert choose_wheel([]).variant == "cpu" and "no NVIDIA driver found" in choose_wheel([]).reason
    assert choose_wheel(gpu("580.82.07"), platform="darwin").variant == "cpu"
    unknown = choose_wheel([Gpu("GPU", "560.35.03", None, None)])
    assert unknown.variant == "cu126" and "compute capability is unknown" in unknown.reason


def test_query_gpus_never_fails():
    assert query_gpus(which=lambda name: None) == []  # no nvidia-smi on the PATH

    def broken(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], 20)

    assert query_gpus(run=broken, which=lambda name: "/usr/bin/nvidia-smi") == []
    calls = []

    def old_driver(command, **kwargs):  # an nvidia-smi that does not know compute_cap, then answers
        calls.append(command[1])
        if "compute_cap" in command[1]:
            return subprocess.CompletedProcess(command, 6, "", 'Field "compute_cap" is not a valid field to query.')
        return subprocess.CompletedProcess(command, 0, "535.183.01, Quadro RTX 4000\n", "")

    assert query_gpus(run=old_driver, which=lambda name: "/usr/bin/nvidia-smi") == [
        Gpu("Quadro RTX 4000", "535.183.01", None, None)]
    assert len(calls) == 2
