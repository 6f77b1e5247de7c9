"""Run under ``torch.distributed.run`` with FSDP's launch environment: load tiny the way a training
script does and write, from rank 0, what every rank holds (tests/test_sharded_launch.py)."""

import hashlib
import sys
from pathlib import Path

from script.data_io import atomic_write_json
from script.launch import all_gather_objects, is_main_process
from script.training_utils import build_arg_parser, load_model_and_tokenizer, start_run


def main(out: Path) -> None:
    import torch.distributed as dist

    args = build_arg_parser("fsdp load probe").parse_args(["--model", "tiny", "--show-samples-every", "0"])
    run = start_run(args, stage="fsdp_load_probe", script="fsdp_load_probe")
    model, _ = load_model_and_tokenizer(run)
    persistent = set(model.state_dict())
    mine = {
        "shapes": {name: list(p.shape) for name, p in model.named_parameters()},
        "buffers": {name: hashlib.sha256(b.float().cpu().numpy().tobytes()).hexdigest()
                    for name, b in model.named_buffers() if name not in persistent},
    }
    ranks = [{**load, **extra} for load, extra in zip(run.load_by_rank, all_gather_objects(mine))]
    if is_main_process():
        atomic_write_json(out, ranks)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
