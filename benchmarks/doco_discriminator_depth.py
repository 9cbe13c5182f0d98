"""How deep DoCo's discriminator must be on the toy model's 8x8 latents (the claim in erasers/doco.py).

The discriminator is trained offline, as in DoCo's warm-up, on predicted clean latents of the ORIGINAL toy
model: target-prompt predictions ("a red triangle") against anchor-prompt predictions ("a red square") on the
same noisy anchor latents, t ~ U{0..999}, batch 8, Adam betas (0.5, 0.999). It prints, per depth and learning
rate, the mean discriminator loss over each 50 of 300 steps (2 ln 2 = 1.386 is chance), and how far apart the
two predictions are by timestep (what there is to tell apart).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doco_discriminator_depth.py
"""

import sys
from pathlib import Path

import numpy as np
import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _util import write_results  # noqa: E402
from erasers.doco import DoCoConfig, NoiseSchedule, PatchDiscriminator, anchor_latents, bce, toy_target, training_pairs  # noqa: E402
from studio.loading import load_pipeline  # noqa: E402
from studio.sampling import encode_prompts  # noqa: E402


def main() -> None:
    pipe = load_pipeline("toy", device="cpu")
    pairs = training_pairs(toy_target("triangle"))
    z = anchor_latents(pipe, [a for a, _ in pairs], DoCoConfig(num_anchor_images=128, anchor_batch_size=64), progress=False)[0]
    which = torch.arange(len(z)) % len(pairs)
    with torch.no_grad():
        e_anchor, e_target = encode_prompts(pipe, [a for a, _ in pairs]), encode_prompts(pipe, [t for _, t in pairs])
    schedule = NoiseSchedule(pipe, "cpu")

    @torch.no_grad()
    def predictions(idx, t, seed):
        noise = torch.randn(z[idx].shape, generator=torch.Generator().manual_seed(seed))
        x = schedule.add_noise(z[idx], noise, t)
        real = schedule.x0(pipe.unet(x, t, encoder_hidden_states=e_anchor[which[idx]]).sample, x, t)
        fake = schedule.x0(pipe.unet(x, t, encoder_hidden_states=e_target[which[idx]]).sample, x, t)
        return real, fake

    lines = [
        "Relative distance |x0(target prompt) - x0(anchor prompt)| / |x0(anchor prompt)| of the original toy model, 64 anchor latents:",
        "",
    ]
    lines += ["| t | 50 | 200 | 400 | 600 | 800 | 950 |", "|---|---|---|---|---|---|---|"]
    cells = []
    for t0 in (50, 200, 400, 600, 800, 950):
        real, fake = predictions(torch.arange(64), torch.full((64,), t0), t0)
        cells.append(f"{((fake - real).norm() / real.norm()).item():.2f}")
    lines += ["| rel. distance | " + " | ".join(cells) + " |", ""]

    data = []
    for step in range(300):
        rng = np.random.default_rng(step)
        idx, t = torch.from_numpy(rng.integers(len(z), size=8)), torch.from_numpy(rng.integers(0, 1000, size=8))
        data.append(predictions(idx, t, step))
    lines += ["Discriminator loss (mean over steps 1-50, 51-100, ..., 251-300; chance 1.386):", ""]
    lines += ["| stride-2 blocks | D lr | 1-50 | 51-100 | 101-150 | 151-200 | 201-250 | 251-300 |", "|---|---|---|---|---|---|---|---|"]
    results = {}
    for blocks in (1, 2):
        for lr in (1e-4, 5e-4, 2e-3):
            torch.manual_seed(0)
            disc = PatchDiscriminator(4, blocks)
            opt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
            losses = []
            for real, fake in data:
                loss = bce(disc(real), 0.0) + bce(disc(fake), 1.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            means = [float(np.mean(losses[i : i + 50])) for i in range(0, 300, 50)]
            results[f"{blocks} blocks, lr {lr}"] = means
            lines.append(f"| {blocks} | {lr:g} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    write_results("doco_discriminator_depth", {"distance_by_t": cells, "loss": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
