"""GPUs without starting CUDA: how many, which precision suits them, and the backend settings.

The config resolvers run in the launching process, before Lightning starts any DDP rank. Asking
torch.cuda.is_available() or get_device_capability() there initialises CUDA in that process,
which a forked rank (strategy ddp_fork / ddp_notebook) cannot use afterwards. Counting goes
through NVML instead (torch.cuda.device_count() does), and so does the compute capability where
the NVML bindings (nvidia-ml-py) are installed. A machine without a GPU driver has no GPU, which
is known without importing torch: a sweep's launching process, which only composes configs and
hands them to its workers, then never imports it (seconds at every sweep's start).
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# bf16 matrix units (tensor cores) first came with Ampere, compute capability 8.0. Older GPUs
# (V100 7.0, T4 7.5) emulate bf16 slowly, or not at all, and run fp16 natively.
BF16_NATIVE = (8, 0)


def gpu_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES applied), without initialising CUDA."""
    if not gpu_driver():
        return 0
    import torch

    try:
        return torch.cuda.device_count()  # NVML where it can, and it never starts CUDA
    except RuntimeError:
        return 0


def gpu_driver() -> bool:
    """Whether this machine has a driver torch could reach a GPU through: NVIDIA's (its NVML
    library comes with every NVIDIA driver, WSL's included) or ROCm's (/dev/kfd)."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return os.path.exists("/dev/kfd")
    return True


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the first visible GPU; None without one.

    Through NVML where nvidia-ml-py is installed; otherwise through torch, which does start
    CUDA in this process (harmless for the default strategies, which start ranks as new
    processes).
    """
    if gpu_count() == 0:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
            if first.startswith(("GPU-", "MIG-")):
                handle = pynvml.nvmlDeviceGetHandleByUUID(first)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(first))
            return tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no bindings, an NVML without this call, an odd device name
        import torch

        return torch.cuda.get_device_capability(0)


def precision_for(capability: tuple[int, int] | None) -> str:
    """The default precision on a GPU of this compute capability (None: the CPU)."""
    if capability is None:
        return "32-true"  # bf16 on the CPU is slow
    return "bf16-mixed" if tuple(capability) >= BF16_NATIVE else "16-mixed"


def auto_precision(accelerator: str) -> str:
    """trainer.precision unless set: bf16-mixed on a GPU with native bf16, 16-mixed on an older
    GPU, full fp32 on the CPU."""
    if accelerator == "cpu" or (accelerator == "auto" and gpu_count() == 0):
        return "32-true"
    return precision_for(gpu_capability() or BF16_NATIVE)


def tune_backends(device: torch.device, deterministic: bool) -> None:
    """Settings that speed training on a GPU at no cost in accuracy worth measuring.

    - cudnn.benchmark: cuDNN times its convolution algorithms once per input shape and keeps the
      fastest (the shapes here are fixed; off when trainer.deterministic asks for repeatable
      kernels).
    - float32 matmul precision "high": TF32 tensor cores for fp32 matrix products (32-true
      training); the mixed precisions do not use fp32 products anyway.
    """
    if device.type != "cuda":
        return
    import torch

    torch.backends.cudnn.benchmark = not deterministic
    torch.set_float32_matmul_precision("high")
