"""Images per second of our sampling loop (`studio.sampling.sample`) and of
`StableDiffusionPipeline.__call__` on the same model, settings and seeds, measured side by side in
one run (interleaved repetitions, medians), and their ratio.

    python benchmarks/sampling.py [--model toy] [--batch 16] [--steps 50] [--repeats 5]
"""

import argparse
import statistics
import time

import torch

from _util import write_results
from studio.loading import load_pipeline
from studio.sampling import sample


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    pipe = load_pipeline(args.model)
    prompts = ["a red triangle", "a striped blue star on a dark background", "a dotted green circle", "a yellow cross"]
    prompts = (prompts * args.batch)[: args.batch]
    seeds = list(range(args.batch))

    def ours():
        return sample(pipe, prompts, seed=seeds, num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt").images

    def diffusers():
        gens = [torch.Generator(pipe.device).manual_seed(s) for s in seeds]
        return torch.from_numpy(
            pipe(prompts, generator=gens, num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np").images
        )

    a, b = ours(), diffusers()  # warm-up, and the same images
    same = float((a.permute(0, 2, 3, 1) - b).abs().max())
    times = {"ours": [], "diffusers": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("diffusers", diffusers)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    ratio = ips["ours"] / ips["diffusers"]
    table = "\n".join(
        [
            f"Sampling speed on `{args.model}` (batch {args.batch}, DDIM {args.steps} steps, guidance {args.guidance}, median of {args.repeats}, interleaved)",
            "",
            "| loop | images/s | seconds per batch |",
            "|---|---|---|",
            f"| `studio.sampling.sample` | {ips['ours']:.2f} | {med['ours']:.3f} |",
            f"| `StableDiffusionPipeline.__call__` | {ips['diffusers']:.2f} | {med['diffusers']:.3f} |",
            f"| ratio (ours / diffusers) | {ratio:.3f} | |",
            "",
            f"Largest pixel difference between the two loops' images: {same:.2e} (same seeds).",
        ]
    )
    write_results("sampling", {"args": vars(args), "seconds": times, "images_per_second": ips, "ratio": ratio, "max_abs_diff": same}, table)


if __name__ == "__main__":
    main()
