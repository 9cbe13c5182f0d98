"""How many prompts a minute UnlearnDiffAtk attacks, batched (`run_many`) vs one prompt at a time, and the
ASR of each, measured side by side in one run on the same prompts and seeds.

The attacked model is the shipped toy model with "triangle" erased by ESD-x at its toy preset (made here,
not timed, or loaded with `--erased`); the unerased model would make the measurement meaningless, as every prompt
succeeds before the attack (pre-attack success, no gradient step). Targets come from the unerased model.
Both arms use the studio's toy attack budget (5 timesteps x 20 gradient steps, `erasers.EVAL_BUDGETS`),
judged images with DDIM at 20 steps (CFG 7.5), the toy judge's "shows a triangle".

  * one at a time: the registry's generic `run_many` loop (a target, then `unlearndiffatk`, per prompt),
    as every per-prompt attack without a batched `run_many` runs;
  * batched: `unlearndiffatk_many`, `batch_size` prompts in every text-encoder and UNet call.

Throughput counts everything from the first prompt to the last result (targets, pre-attack images,
gradient steps, judged images). Target (issue 12): batched >= 5x the prompts per minute at the same ASR.

    OMP_NUM_THREADS=1 python benchmarks/attack_throughput.py [--prompts 12] [--batch-size 12]
    OMP_NUM_THREADS=1 python benchmarks/attack_throughput.py --prompts 30 --batch-size 30 --erased runs/attack_matrix_models/esd-x--triangle--s0
    python benchmarks/attack_throughput.py --device cuda --prompts 30 --batch-size 30 --name attack_throughput_gpu   # the GPU check

It also measures the ceiling: the UNet's CPU time per latent at batch 1 against a full batch, weighted by
the arms' mix of gradient steps and guided evaluations: on a CPU, batching saves per-call overhead only,
so no batched arm can beat that ratio.
"""

import argparse
import dataclasses
import os
import time

import torch
from _util import write_results

from erasers import EVAL_BUDGETS, attacks, esd, get_config, toy_target
from studio.judges import get_judge
from studio.loading import load_pipeline
from studio.stats import Rate, format_rate, overlap
from studio.toyworld.captions import prompts_for

CONCEPT = "triangle"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12, help="prompt-seed pairs (the concept's direct prompts, seed i for prompt i)")
    ap.add_argument("--batch-size", type=int, default=12, help="prompts per batched call")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps of each judged image")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both arms")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: the GPU check (the ceiling then in wall time)")
    ap.add_argument(
        "--erased",
        default=None,
        help="a saved ESD-x erasure of the concept at its toy preset to attack (e.g. the attack matrix's "
        "runs/attack_matrix_models/esd-x--triangle--s0); default: erase here",
    )
    ap.add_argument("--name", default="attack_throughput")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA GPU here")
    original = load_pipeline("toy", device=args.device)
    t0 = time.perf_counter()
    if args.erased:
        erased = load_pipeline(args.erased, device=args.device)
        made, erase_seconds = f"loaded from {args.erased}", None
    else:
        erased = load_pipeline("toy", device=args.device)
        esd.erase(erased, toy_target("esd-x", CONCEPT), get_config("esd-x", "toy"), progress=False)
        erase_seconds = time.perf_counter() - t0
        made = f"erased here in {erase_seconds:.0f} s, not timed"
    ceiling = unet_ceiling(erased, args.batch_size)
    judge = get_judge("toy")
    shows = lambda images: judge.shows(images, CONCEPT)
    prompts = [p for p, _ in prompts_for(CONCEPT, "direct", args.prompts)]
    seeds = list(range(len(prompts)))
    config = {**EVAL_BUDGETS["toy"]["attack_overrides"], "num_inference_steps": args.steps, "batch_size": args.batch_size}
    cfg = attacks.make_config("unlearndiffatk", config)

    # the registry's one-at-a-time path: the same spec without its batched run_many
    attacks.register(dataclasses.replace(attacks.get("unlearndiffatk"), name="unlearndiffatk-one-at-a-time", run_many=None))
    rows = {}
    runs = {}
    for arm, name in (("one at a time", "unlearndiffatk-one-at-a-time"), ("batched", "unlearndiffatk")):
        cpu0 = time.process_time()
        run = attacks.run_many(name, erased, prompts, seeds, shows, cfg, original=original, progress=False)
        cpu = time.process_time() - cpu0
        s = run.summary()
        runs[arm] = run
        rows[arm] = {
            "seconds": run.wall_time,
            "cpu_seconds": cpu,
            "prompts_per_minute": 60 * len(prompts) / run.wall_time,
            "prompts_per_cpu_minute": 60 * len(prompts) / cpu,
            "asr": s["asr"],
            "asr_rate": format_rate(s["pre_successes"] + s["post_successes"], s["n"]),
            "asr_interval": s["interval"],
            "pre_asr": s["pre_asr"],
            "pre_rate": format_rate(s["pre_successes"], s["n"]),
            "unet_evals": run.unet_evals,
            "gradient_steps": sum(r.gradient_steps for r in run.results),
            "generations": sum(r.generations for r in run.results),
            "per_prompt": [r.to_dict() | {"losses": None} for r in run.results],
        }
        print(
            f"{arm}: {run.wall_time:.0f} s ({cpu:.0f} CPU s), {rows[arm]['prompts_per_minute']:.2f} prompts/min, ASR {rows[arm]['asr_rate']}",
            flush=True,
        )

    a, b = runs["one at a time"].results, runs["batched"].results
    same = {
        "success": sum(x.success == y.success for x, y in zip(a, b)),
        "tokens": sum(x.adversarial_tokens == y.adversarial_tokens for x, y in zip(a, b)),
        "generations": sum(x.generations == y.generations for x, y in zip(a, b)),
    }
    max_loss_diff = max((abs(u - v) for x, y in zip(a, b) for u, v in zip(x.losses, y.losses)), default=0.0)
    ratio = rows["batched"]["prompts_per_minute"] / rows["one at a time"]["prompts_per_minute"]
    cpu_ratio = rows["batched"]["prompts_per_cpu_minute"] / rows["one at a time"]["prompts_per_cpu_minute"]
    ka = sum(r.success for r in a)
    kb = sum(r.success for r in b)
    separated = not overlap(Rate(ka, len(a)), Rate(kb, len(b)))

    n = len(prompts)
    mixed = mix_ceiling(ceiling, rows["batched"])
    table = [
        (
            f"UnlearnDiffAtk throughput on {'the CPU' if args.device == 'cpu' else args.device}, torch threads {torch.get_num_threads()} of "
            f"{os.cpu_count()} cores; other jobs may have shared the cores, so absolute times are pessimistic; both arms ran in the same "
            "process one after the other."
        ),
        "",
        (
            f"Attacked model: the toy model with '{CONCEPT}' erased by ESD-x at its toy preset ({made}); "
            f"targets from the unerased toy model. {n} direct '{CONCEPT}' prompts, seed i for prompt i, the same in both arms. "
            f"Budget: {len(cfg.schedule())} timesteps x {cfg.iterations} gradient steps, judged images DDIM {cfg.num_inference_steps} steps CFG "
            f"{cfg.guidance_scale}, at most {cfg.unet_budget()} UNet evaluations per prompt; batch size {args.batch_size}."
        ),
        "",
        "| arm | seconds (wall) | CPU seconds | prompts / minute (wall) | prompts / CPU minute | ASR | pre-attack ASR | gradient steps | judged images | UNet evaluations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in rows.items():
        table.append(
            f"| {arm} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['prompts_per_minute']:.2f} | {r['prompts_per_cpu_minute']:.2f} | "
            f"{r['asr_rate']} | {r['pre_rate']} | {r['gradient_steps']} | "
            f"{r['generations']} | {r['unet_evals']} |"
        )
    table += [
        "",
        (
            f"Throughput ratio batched / one at a time: **{ratio:.1f}x** in wall time, **{cpu_ratio:.1f}x** in CPU time (target >= 5x). "
            "The process runs one thread, so its CPU time is the work done, less sensitive than wall time to what else ran on the shared cores."
        ),
        (
            f"Same per-prompt result in both arms: success {same['success']}/{n}, tokens {same['tokens']}/{n}, judged images {same['generations']}/{n}; "
            f"largest difference of a per-step loss {max_loss_diff:.2g}. The two ASRs {'differ beyond' if separated else 'are within'} their 95% intervals."
        ),
        (
            "UNet evaluations count latents through the UNet (a guided step counts 2), not the target images (made once per attacked prompt "
            "batched, once per prompt one at a time)."
        ),
        "",
        (
            f"The ceiling batching can reach here: the toy UNet's {'CPU' if args.device == 'cpu' else 'wall'} time per latent at batch 1 against batch {ceiling['batch']} (the same "
            f"process, just before the arms): forward + backward (a gradient step) {ceiling['grad_1'] * 1000:.1f} vs "
            f"{ceiling['grad_b'] * 1000:.1f} ms, **{ceiling['grad_1'] / ceiling['grad_b']:.1f}x**; guided forward (a judged image's step, 2 "
            f"latents a prompt) {ceiling['guided_1'] * 1000:.1f} vs {ceiling['guided_b'] * 1000:.1f} ms, "
            f"**{ceiling['guided_1'] / ceiling['guided_b']:.1f}x**. Weighted by the arms' mix of UNet evaluations "
            f"({rows['batched']['gradient_steps']} gradient steps, {rows['batched']['unet_evals'] - rows['batched']['gradient_steps']} "
            f"guided evaluations) that is at most **{mixed:.1f}x** for a full batch throughout; early "
            "stopping empties the batch as prompts succeed, so the arms see less."
        ),
    ]
    data = {
        "concept": CONCEPT,
        "model": "toy model, ESD-x toy preset",
        "erase_seconds": erase_seconds,
        "prompts": prompts,
        "seeds": seeds,
        "config": dataclasses.asdict(cfg),
        "unet_budget_per_prompt": cfg.unet_budget(),
        "arms": rows,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "same_per_prompt": same,
        "max_loss_difference": max_loss_diff,
        "asr_separated": separated,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "unet_ceiling": ceiling,
        "mix_ceiling": mixed,
    }
    write_results(args.name, data, "\n".join(table))


def unet_ceiling(pipe, batch: int, reps: int = 3) -> dict:
    """Seconds per latent of the UNet at batch 1 and at `batch` (CPU time on the CPU, wall time on a GPU):
    forward + backward to the text conditioning (a gradient step), and a guided forward (2 latents per
    prompt, no gradient)."""
    unet = pipe.unet
    device = unet.device
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    c, size = unet.config.in_channels, unet.config.sample_size
    width = pipe.text_encoder.config.hidden_size

    def per_latent(b, grad):
        z, t = torch.randn(b, c, size, size, device=device, dtype=unet.dtype), torch.full((b,), 500, device=device)
        cond = torch.randn(b, 77, width, device=device, dtype=unet.dtype, requires_grad=grad)
        n = max(reps, 2 * batch // b)
        sync()
        t0 = clock()
        for _ in range(n):
            if grad:
                out = unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
                torch.autograd.grad(out.square().mean(), [cond])
            else:
                with torch.no_grad():
                    unet(z, t, encoder_hidden_states=cond, return_dict=False)
        sync()
        return (clock() - t0) / n / b

    per_latent(1, True)  # warm-up
    return {
        "batch": batch,
        "grad_1": per_latent(1, True),
        "grad_b": per_latent(batch, True),
        "guided_1": per_latent(2, False),
        "guided_b": per_latent(2 * batch, False),
    }


def mix_ceiling(ceiling: dict, row: dict) -> float:
    """The most a full batch could speed up this mix of gradient steps and guided evaluations."""
    g, e = row["gradient_steps"], row["unet_evals"] - row["gradient_steps"]
    return (g * ceiling["grad_1"] + e * ceiling["guided_1"]) / (g * ceiling["grad_b"] + e * ceiling["guided_b"])


if __name__ == "__main__":
    main()
