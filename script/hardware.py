"""Device, precision, attention kernel and memory: what the hardware of a run resolves to.

    device = resolve_device("auto")              # cuda:<LOCAL_RANK> when a GPU is visible, else cpu
    dtype = resolve_dtype(device)                # bf16 on capable GPUs, fp32 otherwise, never fp16
    quantization = resolve_quantization("auto", memory_config, device)
    reset_peak_memory(device); ...; peak_memory_bytes(device)

torch is imported inside the functions (kept lazy so that ``--help`` is instant).
"""

from __future__ import annotations

import os

from script.training_config import ConfigError, MemoryConfig

QUANTIZATION_CHOICES = ("auto", "none", "8bit", "4bit")
# eager is what the Gemma 3 cards recommend for training; sdpa and FlashAttention-2 are faster where they fit.
ATTN_IMPLEMENTATION_CHOICES = ("eager", "sdpa", "flash_attention_2")


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        # Under a multi-process launch each process owns the GPU of its local rank.
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: no CUDA device is visible (torch {torch.__version__}); "
                              "use --device cpu, or install a CUDA build of torch (see README)")
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return f"cuda:{index}"
    if requested != "cpu":
        raise ConfigError(f"--device {requested!r}: expected cpu, cuda, cuda:N or auto")
    return "cpu"


def resolve_dtype(device: str):
    """bf16 on CUDA cards that support it, fp32 otherwise. Never fp16: Gemma 3 overflows in fp16."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_quantization(requested: str, memory: MemoryConfig, device: str) -> str:
    """``auto`` takes the registry's setting on CUDA and full precision on CPU.

    An explicit 8bit/4bit request is honoured on CPU too (bitsandbytes >= 0.48 has CPU kernels),
    which is how the quantized path is tested without a GPU.
    """
    if requested == "auto":
        return memory.quantization if device.startswith("cuda") else "none"
    if requested in ("8bit", "4bit"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"--quantization {requested} needs bitsandbytes ({exc}); pip install -r requirements.txt"
                              ) from None
    return requested


def resolve_attn_implementation(requested: str, device: str) -> str:
    """The attention kernel, refused up front where it cannot run (transformers says so only at load)."""
    if requested not in ATTN_IMPLEMENTATION_CHOICES:
        raise ConfigError(f"--attn-implementation {requested!r}: expected one of {', '.join(ATTN_IMPLEMENTATION_CHOICES)}")
    if requested == "flash_attention_2":
        if not device.startswith("cuda"):
            raise ConfigError("--attn-implementation flash_attention_2 runs on CUDA only; on "
                              f"{device} use eager or sdpa")
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("--attn-implementation flash_attention_2 needs the flash-attn package "
                              "(pip install -e \".[gpu]\" on a CUDA machine, see README); or use sdpa")
    return requested


def peak_memory_bytes(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
    except (ImportError, OSError):
        return None
