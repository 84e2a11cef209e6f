"""Started twice by `torchrun` from tests/test_training_e2e.py: trains and saves this rank's weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from image_enhancer_training.config import load_config
from image_enhancer_training.networks import build_generator
from image_enhancer_training.run import run_training


def main(config_path: Path, out: Path) -> None:
    rank = int(os.environ["RANK"])
    result = run_training(config_path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in result.generator_state.items()}, str(out / f"rank{rank}.safetensors")
    )
    if rank == 0:
        # The initial weights, as every rank builds them from the seed, to show that training moved them.
        torch.manual_seed(load_config(config_path).seed)
        init = build_generator(load_config(config_path).model).state_dict()
        save_file({k: v.contiguous() for k, v in init.items()}, str(out / "init.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
