"""GPU check (issue 4): one AdvUnlearn outer step and one ESD step on the SD v1.4 architecture
(random weights, 512x512, UNet in fp16 or fp32, text encoder trained in fp32), with time and peak memory.

Run as one prepared command on a machine with a CUDA GPU (no downloads: the architecture comes from
assets/configs/sd-v1):

    python benchmarks/gpu_erasure_step.py --unet-dtype fp16 --json $OUT/gpu_erasure_step.json

Both steps follow the official schedules: ESD-x with a trajectory stopped at a random step out of 50;
AdvUnlearn with the official inner attack (30 PGD steps, fresh targets) and with our default fast
schedule, each on a stopped trajectory of the original model plus a retain batch of 5.
"""

import argparse
import json
import time

import torch

from erasers import Concept, erase, get_config
from studio.convert import random_sd_pipeline


def measure(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--unet-dtype", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--steps", type=int, default=3, help="outer steps per measurement (the first warms up)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU")
    dtype = torch.float16 if args.unet_dtype == "fp16" else torch.float32
    results = {"gpu": torch.cuda.get_device_name(0), "unet_dtype": args.unet_dtype, "resolution": 512}
    concept = Concept(["nudity"], retain=[f"a photo of a {o}" for o in ("dog", "car", "chair", "tree", "cup", "bird")])

    for name, method, overrides in (
        ("esd-x", "esd-x", {"iterations": args.steps, "seed": 0}),
        ("advunlearn (our default)", "advunlearn", {"iterations": args.steps, "warmup_iterations": 0}),
        (
            "advunlearn (official schedule)",
            "advunlearn",
            {"iterations": args.steps, "warmup_iterations": 0, "attack_steps": 30, "attack_method": "pgd", "reuse_targets": False},
        ),
    ):
        pipe = random_sd_pipeline("v1", dtype=dtype, device="cuda")
        if method == "advunlearn":
            pipe.text_encoder.to(torch.float32)  # trained in fp32, as the official code
        per_step = []
        cfg = get_config(method, "official", overrides)
        result, seconds, peak = measure(
            lambda pipe=pipe: erase(
                pipe, concept, method, config=cfg, progress=False, callback=lambda i: per_step.append(time.perf_counter())
            )
        )
        steps = [b - a for a, b in zip(per_step, per_step[1:])]
        results[name] = {
            "seconds_total": round(seconds, 2),
            "seconds_per_step_after_first": round(sum(steps) / max(len(steps), 1), 2),
            "peak_memory_gib": round(peak, 2),
            "unet_evals": result.stats["unet_evals"],
            "steps": args.steps,
        }
        print(name, results[name], flush=True)
        del pipe
        torch.cuda.empty_cache()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
