"""Data-parallel erasure through accelerate: two CPU processes (gloo) train one erasure together.

`accelerate launch --multi_gpu --num_processes 2` starts them through torchrun; on a machine without
GPUs accelerate runs them as MULTI_CPU with the gloo backend (`--cpu` would start a single process)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file


HELPER = Path(__file__).parent / "helpers" / "dist_erase.py"


def test_two_processes_train_one_erasure_and_agree(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.fail("accelerate is a dependency of the project but its launcher is missing")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(HELPER),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    with safe_open(str(tmp_path / "rank0.safetensors"), "pt") as f:
        assert f.metadata()["world"] == "2"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged
    assert (tmp_path / "checkpoint" / "checkpoint.safetensors").is_file()

    # one process alone takes other steps (it sees half the samples per step)
    single = tmp_path / "single"
    single.mkdir()
    res = subprocess.run([sys.executable, str(HELPER), str(single)], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    c = load_file(str(single / "rank0.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)
