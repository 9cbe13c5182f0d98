"""Small helpers shared by the benchmark scripts: where results go, and how they are written."""

import json
import platform
import time
from pathlib import Path

import torch


RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(name: str, data: dict, table: str) -> Path:
    """benchmarks/results/<name>.json and <name>.md (the printed table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {**data, "machine": machine()}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(table.rstrip() + "\n")
    print(table)
    print(f"\nwrote {RESULTS / (name + '.json')} and {RESULTS / (name + '.md')}")
    return RESULTS / f"{name}.json"
