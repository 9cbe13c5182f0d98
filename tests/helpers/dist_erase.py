"""Run by tests/test_distributed.py under `accelerate launch --num_processes 2 --cpu`: one ESD erasure,
data-parallel; every process writes its final weights so the test can compare them."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import build_tiny_pipe  # noqa: E402

from erasers import Concept, erase  # noqa: E402


out = Path(sys.argv[1])
torch.set_num_threads(1)
result = erase(
    build_tiny_pipe(),
    Concept("a triangle"),
    "esd-x",
    config={"iterations": 4, "num_inference_steps": 6, "lr": 1e-3, "checkpoint_every": 2},
    checkpoint_dir=out / "checkpoint",
    progress=False,
)
import torch.distributed as dist  # noqa: E402

rank = dist.get_rank() if dist.is_initialized() else 0
world = dist.get_world_size() if dist.is_initialized() else 1
save_file({k: v.contiguous() for k, v in result.weights.items()}, str(out / f"rank{rank}.safetensors"), metadata={"world": str(world)})
