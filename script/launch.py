"""Multi-process launches (``accelerate launch`` with configs/accelerate/*.yaml, or torchrun): which kind
this process was started under, whether it shards the weights, and the collectives work outside a Trainer
needs. Every helper is a no-op in a single-process run.

    launch = launch_kind()            # single, ddp, fsdp or deepspeed
    if shards_weights(launch): ...    # FSDP / ZeRO-3: no full model per device
    init_distributed(run)             # join the group before the Trainer does
    items = broadcast_from_main(items)

torch and accelerate are imported inside the functions that need them, so that a single-process
``--help`` does not load them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
from typing import Any

from script.training_config import ConfigError

logger = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))



def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))



def is_main_process() -> bool:
    return process_rank() == 0



def env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")



def launch_kind() -> str:
    """single, ddp, fsdp or deepspeed: what ``accelerate launch --config_file configs/accelerate/<x>.yaml``
    (it exports ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED) or torchrun started."""
    if env_flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return "ddp" if world_size() > 1 else "single"



def shards_weights(launch: str | None = None) -> bool:
    """FSDP and ZeRO-3 split the base weights over the ranks; DDP and ZeRO-2 keep a full copy on each."""
    launch = launch or launch_kind()
    return launch == "fsdp" or (launch == "deepspeed" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")



def check_launch_environment(launch: str, device: str) -> None:
    """A DeepSpeed launch needs the package and CUDA; say so before anything loads."""
    if launch != "deepspeed":
        return
    if not device.startswith("cuda"):
        raise ConfigError("DeepSpeed ZeRO needs CUDA GPUs and none is visible: on CPU launch with "
                          "configs/accelerate/fsdp.yaml or ddp.yaml (or torchrun)")
    try:
        import deepspeed  # noqa: F401  (only to check that it is installed)
    except ImportError as exc:
        raise ConfigError(f"DeepSpeed launch but deepspeed is not installed ({exc}): "
                          "pip install -e '.[deepspeed]'") from exc



def sharded_launch_settings(launch: str, requested_quantization: str, quantization: str,
                            gradient_checkpointing: bool) -> tuple[str, bool, str]:
    """(quantization, trainer gradient checkpointing, who checkpoints) for this launch.

    Under FSDP / ZeRO-3 the sharded base is bf16: bitsandbytes' 8-bit weights cannot be sharded and
    nf4 needs a quantized storage dtype this toolkit does not set up for sharding, so an explicit
    8bit/4bit is refused and ``auto`` becomes ``none``. When the FSDP config checkpoints activations
    itself (``fsdp_activation_checkpointing: true``), the Trainer must not do it too (transformers
    refuses the pair), so the memory profile's gradient checkpointing is handed to FSDP."""
    if not shards_weights(launch):
        return quantization, gradient_checkpointing, "trainer" if gradient_checkpointing else "off"
    if requested_quantization in ("8bit", "4bit"):
        raise ConfigError(f"--quantization {requested_quantization} cannot be sharded under {launch.upper()}: "
                          "use --quantization none (bf16 base, sharded over the GPUs) or a DDP launch "
                          "(configs/accelerate/ddp.yaml) for a quantized base")
    if quantization != "none":
        logger.info("%s launch: the base is sharded in %s, not quantized (--quantization auto -> none)",
                    launch.upper(), "bf16")
    if launch == "fsdp" and env_flag("FSDP_ACTIVATION_CHECKPOINTING"):
        return "none", False, "fsdp"
    return "none", gradient_checkpointing, "trainer" if gradient_checkpointing else "off"



def global_batch(run) -> int:
    """Records per optimizer step over all processes: batch x grad-accum x processes."""
    return run.batch * run.grad_accum * world_size()



def init_distributed(run) -> int:
    """Join the launch's process group now (the Trainer joins it only when it is built), so that
    work outside a Trainer can use the collectives below. accelerate's ``PartialState`` picks nccl on
    CUDA and gloo on CPU, with the Trainer's default timeout; the Trainer then reuses the group.
    Returns the world size."""
    world = world_size()
    if world > 1:
        import torch
        from accelerate import PartialState
        from transformers import TrainingArguments

        on_cuda = torch.device(run.device).type == "cuda"
        state = PartialState(cpu=not on_cuda, timeout=_dt.timedelta(seconds=TrainingArguments.ddp_timeout))
        if state.num_processes != world:
            raise RuntimeError(f"WORLD_SIZE is {world} but the process group has {state.num_processes} processes")
    return world



def _require_process_group() -> None:
    """Several processes but no group: each rank would silently go its own way (accelerate's
    collectives are no-ops without one), so refuse."""
    if world_size() > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("multi-process launch but no process group: call init_distributed(run) first")



def barrier() -> None:
    """Wait until every process gets here (e.g. until rank 0 has written what all of them read)."""
    if world_size() > 1:
        from accelerate import PartialState

        _require_process_group()
        PartialState().wait_for_everyone()



def leave_process_group() -> None:
    """At the end of a successful multi-process run: wait for every rank, then close the group.
    A rank that exits while another still works (rank 0 evaluating, saving) would otherwise tear
    down gloo/NCCL under it; on CPU that aborts the exiting rank ("terminate called without an
    active exception", exit -6) and the launcher then kills the run. Nothing to do (and torch is not
    imported) in a single-process run."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    distributed.barrier()
    distributed.destroy_process_group()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (picklable objects)."""
    if world_size() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    _require_process_group()
    return broadcast_object_list([obj if is_main_process() else None], from_process=0)[0]



def all_gather_objects(obj: Any) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if world_size() == 1:
        return [obj]
    from accelerate.utils import gather_object

    _require_process_group()
    return gather_object([obj])



def fsdp_rank_holds_no_weights() -> bool:
    """Under FSDP with cpu_ram_efficient_loading, every rank but each machine's first loads nothing."""
    return (launch_kind() == "fsdp" and env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING")
            and int(os.environ.get("LOCAL_RANK", "0")) != 0)



def sharded_parameter_count(model) -> int:
    """Parameters held as DTensor shards (FSDP2); 0 for a model each rank keeps whole."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return 0
    return sum(isinstance(p, DTensor) for p in model.parameters())



def load_report(model) -> dict:
    """What this rank materialised at load time: tensors and bytes per device type (``meta`` = not loaded)."""
    by_device: dict[str, dict] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        entry = by_device.setdefault(tensor.device.type, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += tensor.numel() * tensor.element_size()
    return {"rank": process_rank(), "read_checkpoint": not fsdp_rank_holds_no_weights(), "by_device": by_device}
