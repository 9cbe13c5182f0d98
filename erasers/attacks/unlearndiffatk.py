"""UnlearnDiffAtk: discrete prefix tokens against the attacked model's own denoising loss (Zhang et al., ECCV 2024)."""

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.progress import event
from studio.sampling import Cancelled, is_cancelled

from .common import (
    AttackResult,
    _exact,
    _pre_attack,
    _unwrap,
    adversarial_text,
    batched_targets,
    encode_with_prefix,
    judge_texts,
    pre_attack_many,
    prefix_input_ids,
    vocabulary,
)

# ----------------------------------------------------------------------------- UnlearnDiffAtk


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of `v` `(..., V)` onto the probability simplex.

    Exact: `max(v - tau, 0)` with the `tau` that makes each row sum to 1, found by Michelot's
    algorithm (1986): tau = (sum of the support - 1) / |support|, shrink the support to the entries
    above tau, repeat until it stops shrinking (a few O(V) passes; fewer when the rows are sparse, as
    they become during an attack). The official code finds `tau` by bisection to 1e-5.
    """
    n = v.shape[-1]
    # start from the larger of two lower bounds on tau (Condat 2016): the whole row's, and max - 1 (the
    # largest entry projects to at most 1); from below, the support only shrinks, to the exact one
    tau = torch.maximum((v.sum(-1, keepdim=True) - 1) / n, v.amax(-1, keepdim=True) - 1)  # (..., 1)
    size = torch.full_like(tau, n)
    for _ in range(n):
        support = v > tau  # (..., V)
        new_size = support.sum(-1, keepdim=True).to(v.dtype)
        tau = (torch.where(support, v, 0).sum(-1, keepdim=True) - 1) / new_size
        if torch.equal(new_size, size):
            break
        size = new_size
    return (v - tau).clamp_min(0)


class _SampleToken(torch.autograd.Function):
    """Straight-through sampling, as the official `STERandSelect` followed by `onehot @ E`: a token drawn
    from each row of `probs` `(k, V)`, its embedding row of `E` `(V, D)` forward (exactly `onehot @ E`,
    without the dense product), and backward the gradient of the one-hot, `grad @ E^T`, clipped to
    [-1, 1] (hardtanh). The draw is by inverse CDF (one uniform per row from `generator`, the first index
    whose cumulative probability exceeds it): the same categorical distribution as `torch.multinomial`,
    about 25x cheaper on a 49,408-token vocabulary (a different stream of draws than the multinomial that
    made the attack matrix's committed UnlearnDiffAtk cells, so a `--fresh` rerun draws other tokens)."""

    @staticmethod
    def forward(ctx, probs, E, generator):
        ids = sample_rows(probs, generator)
        ctx.save_for_backward(E)
        return E[ids]

    @staticmethod
    def backward(ctx, grad):
        (E,) = ctx.saved_tensors
        return F.hardtanh(grad @ E.T.to(grad.dtype)), None, None


def sample_rows(probs: torch.Tensor, generator) -> torch.Tensor:
    """One index per row of `probs` `(k, V)` (non-negative rows, any positive sum), drawn with `generator`."""
    cdf = probs.detach().cumsum(-1)
    u = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device, dtype=cdf.dtype)
    ids = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1)  # right: a zero-probability entry is never drawn
    over = ids >= probs.shape[-1]  # u * total rounded up to the total: the last entry with mass
    if over.any():
        ids[over] = (probs.detach()[over] > 0).long().cumsum(-1).argmax(-1)
    return ids


@dataclass
class UnlearnDiffAtkConfig:
    """UnlearnDiffAtk (Zhang et al., ECCV 2024; `attackers/text_grad_.py`, `tasks/classifier_.py`).

    Defaults are the official ones. k (`num_tokens`) is 3 for styles and objects and 5 for nudity
    and violence in the official configs; `UnlearnDiffAtkConfig.preset("nudity")` gives the latter.
    The full budget is `num_timesteps * iterations` = 2000 gradient steps (one UNet forward and
    backward each) and up to 50 generations plus the pre-attack one (50 guided DDIM steps, 100 UNet
    evaluations each): at most 2000 + 51 * 100 = 7100 UNet evaluations per prompt.
    """

    num_tokens: int = 3  # k adversarial prefix tokens after SOT (5 for nudity / violence)
    num_timesteps: int = 50  # the 'sequential' schedule: timesteps [10, 30, ..., 990] for T = 1000
    iterations: int = 40  # gradient steps per timestep, each with fresh noise
    lr: float = 0.01  # Adam
    weight_decay: float = 0.1  # Adam's (L2) weight decay
    rand_init: bool = False  # False: uniform 1/|V| (official); True: uniform random, then projected
    vocabulary: object = "all"  # "all" (official, minus start/end), "words" (re-tokenises exactly) or a list of token ids
    num_inference_steps: int = 50  # DDIM steps of each judged image (official: LMS 50)
    guidance_scale: float = 7.5  # CFG scale of each judged image (official: the prompt CSV's, mostly 7.5)
    timesteps: tuple | None = None  # explicit timesteps, overriding num_timesteps
    batch_size: int = 32  # prompts per batched UNet call in `run_many` (speed and memory only; results do not depend on it)

    def __post_init__(self):
        for name in ("num_tokens", "num_timesteps", "iterations", "batch_size", "num_inference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UnlearnDiffAtkConfig.{name} must be a whole number >= 1, got {value!r} (a budget of 0 attacks nothing)")
        if not self.schedule():
            raise ValueError(
                "UnlearnDiffAtkConfig has no timesteps (a budget of 0 gradient steps); set num_timesteps >= 1 or timesteps=(t, ...)"
            )

    def unet_budget(self) -> int:
        """The most UNet evaluations per prompt: every gradient step, and a judged image (steps x 2 with
        CFG) before the attack and after each timestep block."""
        blocks = len(self.schedule())
        return blocks * self.iterations + (blocks + 1) * self.num_inference_steps * (2 if self.guidance_scale > 1.0 else 1)

    @classmethod
    def preset(cls, kind: str, **overrides) -> "UnlearnDiffAtkConfig":
        """The official k per concept kind: "object" / "style" -> 3, "nudity" / "violence" / "unsafe" -> 5."""
        ks = {"object": 3, "style": 3, "nudity": 5, "violence": 5, "unsafe": 5}
        if kind not in ks:
            raise ValueError(f"unknown concept kind {kind!r}; use one of {sorted(ks)}")
        return cls(**{"num_tokens": ks[kind], **overrides})

    def schedule(self, num_train_timesteps: int = 1000) -> list[int]:
        if self.timesteps is not None:
            return [int(t) for t in self.timesteps]
        n, T = self.num_timesteps, num_train_timesteps
        return list(range(T // n // 2, T, T // n))[:n]


def judge_tokens(
    pipe, result: AttackResult, ids: list, prompt: str, is_success, config, *, seed, block, t, total, callback, cancel
) -> bool:
    """Decode the block's argmax tokens to text, re-tokenise, and judge the text's image (seed `seed`);
    records it in `result` and returns whether the attack succeeded. A text over 77 tokens (decoding
    and re-tokenising can lengthen odd byte tokens) is skipped: nothing truncated is judged."""
    tok = pipe.tokenizer
    text = adversarial_text(tok, ids, prompt)
    entry = {"t": t, "prompt": text, "success": False, "loss": float(np.mean(result.losses[-config.iterations :]))}
    judged = judge_texts(pipe, [(result, seed, text, entry)], is_success, config, cancel)
    result.history.append(entry)
    if not judged:
        return False
    ((_, ok, image),) = judged
    result.adversarial_tokens, result.exact_tokens = ids, _exact(tok, text, ids, prompt)
    if callback is not None:
        callback(event("unlearndiffatk", result.gradient_steps, total, phase="eval", i=block, t=t, prompt=text, success=ok, image=image))
    return ok


def unlearndiffatk(
    pipe, prompt, target_latents, is_success, config=None, *, seed=0, callback=None, cancel=None, progress=True
) -> AttackResult:
    """Attack `pipe` (the erased model) on `prompt`; see `UnlearnDiffAtkConfig` and the module docstring.

    `target_latents` `(1, 4, h, w)` are the clean latents of the ORIGINAL model's image of the prompt
    (`target_latents(original_pipe, prompt, seed)`). Loss, per step, on fresh noise eps:
    `|| eps - eps_theta(sqrt(a_t) x_tgt + sqrt(1 - a_t) eps, t, [SOT, onehot @ E, prompt]) ||^2`.
    After each timestep block the argmax tokens are decoded to text, re-tokenised, and the text's
    image (seed `seed`) is judged; the attack stops on the first success.
    `callback` gets `studio.progress` events, stage "unlearndiffatk", step / total = gradient steps:
    `{"phase": "step", "i", "t", "loss"}` per step and `{"phase": "eval", "i", "t", "prompt",
    "success", "image"}` per judged image (the pre-attack one at step 0).
    """
    config = config or UnlearnDiffAtkConfig()
    if target_latents is None:
        raise ValueError("unlearndiffatk needs the target image's latents: target_latents(original_pipe, prompt, seed)")
    start = time.perf_counter()
    tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    prefix_input_ids(tok, [prompt], config.num_tokens)  # raises early if the prompt cannot take k tokens
    total = len(config.schedule(pipe.scheduler.config.num_train_timesteps)) * config.iterations
    result = _pre_attack("unlearndiffatk", pipe, prompt, is_success, seed, config, callback, cancel, step=0, total=total, t=None)
    if result.pre_success:
        result.wall_time = time.perf_counter() - start
        return result

    device, dtype = unet.device, unet.dtype
    vocab = vocabulary(tok, config.vocabulary)
    E = _unwrap(te).get_input_embeddings().weight.detach()[vocab.to(device)].float()  # (V, D)
    k, V = config.num_tokens, len(vocab)
    probs = torch.full((k, V), 1.0 / V, device=device)  # (k, V) relaxed one-hot vectors
    if config.rand_init:
        probs = project_simplex(torch.rand((k, V), generator=torch.Generator().manual_seed(seed)).to(device))
    probs.requires_grad_(True)
    optimizer = torch.optim.Adam([probs], lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator(device).manual_seed(seed)
    x0 = target_latents.to(device, torch.float32)  # (1, 4, h, w)
    alphas = pipe.scheduler.alphas_cumprod.to(device, torch.float32)
    v_pred = pipe.scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    schedule = config.schedule(pipe.scheduler.config.num_train_timesteps)

    bar = tqdm(total=len(schedule) * config.iterations, desc="UnlearnDiffAtk", disable=not progress, leave=False)
    try:
        for b, t in enumerate(schedule):
            a = alphas[t]
            tt = torch.tensor([t], device=device)
            for _ in range(config.iterations):
                if is_cancelled(cancel):
                    raise Cancelled(f"UnlearnDiffAtk cancelled after {result.gradient_steps} gradient steps")
                prefix = _SampleToken.apply(probs, E, gen)  # (k, D): the drawn tokens' embeddings (onehot @ E)
                cond = encode_with_prefix(te, tok, [prompt], prefix).to(dtype)  # (1, 77, D)
                noise = torch.randn(x0.shape, generator=gen, device=device)
                z_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                pred = unet(z_t.to(dtype), tt, encoder_hidden_states=cond, return_dict=False)[0]
                target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_pred else noise
                loss = F.mse_loss(pred.float(), target)
                optimizer.zero_grad(set_to_none=True)
                (probs.grad,) = torch.autograd.grad(loss, [probs])  # no .grad on the model's weights
                optimizer.step()
                with torch.no_grad():
                    probs.copy_(project_simplex(probs))
                result.losses.append(loss.item())
                result.gradient_steps += 1
                result.unet_evals += 1
                bar.update(1)
                if callback is not None:
                    callback(
                        event(
                            "unlearndiffatk",
                            result.gradient_steps,
                            total,
                            phase="step",
                            i=result.gradient_steps - 1,
                            t=t,
                            loss=result.losses[-1],
                        )
                    )

            ids = vocab[probs.detach().argmax(-1).cpu()].tolist()
            if judge_tokens(
                pipe, result, ids, prompt, is_success, config, seed=seed, block=b, t=t, total=total, callback=callback, cancel=cancel
            ):
                result.success = True
                break
    finally:
        bar.close()
    result.wall_time = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------- batched: many prompts at once


@dataclass
class _Slot:
    """One prompt's attack state in the batch: its own relaxed one-hots, optimiser, generator, target."""

    index: int
    prompt: str
    seed: int
    result: AttackResult
    probs: torch.Tensor
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    x0: torch.Tensor  # (1, 4, h, w)
    block: int = 0
    ids: list = field(default_factory=list)  # the block's argmax tokens


def unlearndiffatk_many(
    erased, prompts, seeds, is_success, config=None, *, original=None, concept=None, callback=None, cancel=None, progress=True
):
    """UnlearnDiffAtk on many (prompt, seed) pairs at once -> `AttackRun`; the registry's `run_many`.

    Up to `config.batch_size` prompts share every text-encoder and UNet call (one latent per prompt, each
    at its own timestep); each keeps its own relaxed one-hots, Adam state, target latents (from
    `original`, as `target_latents(original, prompt, seed)`) and noise generator seeded with its seed, so
    its trajectory is the one `unlearndiffatk` follows alone for that seed (up to the float rounding of
    batched matrix products). The judged images are generated in batches too. A prompt leaves the batch
    when it succeeds (or already succeeds before the attack) or its schedule ends; a waiting prompt
    takes its place at the next timestep block. `AttackResult.wall_time` is the time from the start
    until that prompt left. Targets are made only for the prompts the attack runs on (one-at-a-time
    `run_many` makes one for every prompt); like there, their generation is not in `unet_evals`.
    """
    from . import AttackRun  # the package imports this module first

    config = config or UnlearnDiffAtkConfig()
    if original is None:
        raise ValueError("unlearndiffatk needs the original (unerased) model for its target images; pass original=")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(seeds)] * len(prompts) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seeds) != len(prompts) or not prompts:
        raise ValueError(f"one seed per prompt and at least one prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
    start = time.perf_counter()
    pipe = erased
    tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    prefix_input_ids(tok, prompts, config.num_tokens)  # raises early if a prompt cannot take k tokens
    schedule = config.schedule(pipe.scheduler.config.num_train_timesteps)
    per_prompt = len(schedule) * config.iterations
    results = pre_attack_many("unlearndiffatk", pipe, prompts, seeds, is_success, config, callback, cancel, total=per_prompt, t=None)
    for r in results:
        if r.pre_success:
            r.wall_time = time.perf_counter() - start
    queue = [i for i, r in enumerate(results) if not r.pre_success]
    total = len(queue) * per_prompt

    device, dtype = unet.device, unet.dtype
    vocab = vocabulary(tok, config.vocabulary)
    E = _unwrap(te).get_input_embeddings().weight.detach()[vocab.to(device)].float()  # (V, D)
    k, V = config.num_tokens, len(vocab)
    alphas = pipe.scheduler.alphas_cumprod.to(device, torch.float32)
    v_pred = pipe.scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    pool: list[_Slot] = []
    done = 0  # gradient steps over all prompts

    def admit(indices):
        x0s = batched_targets(original, [prompts[i] for i in indices], [seeds[i] for i in indices], config.batch_size)
        for i, x0 in zip(indices, x0s):
            probs = torch.full((k, V), 1.0 / V, device=device)
            if config.rand_init:
                probs = project_simplex(torch.rand((k, V), generator=torch.Generator().manual_seed(seeds[i])).to(device))
            probs.requires_grad_(True)
            opt = torch.optim.Adam([probs], lr=config.lr, weight_decay=config.weight_decay)
            gen = torch.Generator(device).manual_seed(seeds[i])
            pool.append(_Slot(i, prompts[i], seeds[i], results[i], probs, opt, gen, x0[None].to(device, torch.float32)))

    bar = tqdm(total=total, desc=f"UnlearnDiffAtk x{len(queue)}", disable=not progress, leave=False)
    try:
        while pool or queue:
            room = config.batch_size - len(pool)
            if queue and room > 0:
                admit(queue[:room])
                queue = queue[room:]
            batch = [s.prompt for s in pool]
            ts = [schedule[s.block] for s in pool]
            tt = torch.tensor(ts, device=device)
            a = alphas[tt][:, None, None, None]  # (B, 1, 1, 1)
            x0 = torch.cat([s.x0 for s in pool])  # (B, 4, h, w)
            for _ in range(config.iterations):
                if is_cancelled(cancel):
                    raise Cancelled(f"UnlearnDiffAtk cancelled after {done} gradient steps over {len(prompts)} prompts")
                prefixes = torch.stack([_SampleToken.apply(s.probs, E, s.gen) for s in pool])  # (B, k, D), each from its own generator
                cond = encode_with_prefix(te, tok, batch, prefixes).to(dtype)  # (B, 77, D)
                noise = torch.cat([torch.randn(s.x0.shape, generator=s.gen, device=device) for s in pool])
                z_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                pred = unet(z_t.to(dtype), tt, encoder_hidden_states=cond, return_dict=False)[0]
                target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_pred else noise
                losses = (pred.float() - target).square().flatten(1).mean(1)  # (B,): each prompt's own MSE
                grads = torch.autograd.grad(losses.sum(), [s.probs for s in pool])  # no .grad on the model's weights
                for s, g, loss in zip(pool, grads, losses.tolist()):
                    s.optimizer.zero_grad(set_to_none=True)
                    s.probs.grad = g
                    s.optimizer.step()
                    with torch.no_grad():
                        s.probs.copy_(project_simplex(s.probs))
                    s.result.losses.append(loss)
                    s.result.gradient_steps += 1
                    s.result.unet_evals += 1
                done += len(pool)
                bar.update(len(pool))
                if callback is not None:
                    callback(
                        event(
                            "unlearndiffatk", done, total, phase="step", i=done - 1, active=len(pool), loss=float(np.mean(losses.tolist()))
                        )
                    )
            # the block's argmax tokens, decoded and re-tokenised, judged together
            entries = []
            for s, t in zip(pool, ts):
                ids = vocab[s.probs.detach().argmax(-1).cpu()].tolist()
                text = adversarial_text(tok, ids, s.prompt)
                s.ids = ids
                entries.append({"t": t, "prompt": text, "success": False, "loss": float(np.mean(s.result.losses[-config.iterations :]))})
            items = [(s.result, s.seed, e["prompt"], e) for s, e in zip(pool, entries)]
            slot_of = {id(s.result): s for s in pool}  # judge_texts returns the judged items, by their result
            for (r, _, text, entry), ok, image in judge_texts(pipe, items, is_success, config, cancel):
                s = slot_of[id(r)]
                r.adversarial_tokens, r.exact_tokens = s.ids, _exact(tok, text, s.ids, s.prompt)
                if callback is not None:
                    callback(
                        event(
                            "unlearndiffatk",
                            done,
                            total,
                            phase="eval",
                            i=s.block,
                            t=entry["t"],
                            prompt=text,
                            success=ok,
                            image=image,
                            prompt_index=s.index + 1,
                            prompts=len(prompts),
                        )
                    )
            keep = []
            for s, entry in zip(pool, entries):
                s.result.history.append(entry)
                s.block += 1
                if s.result.success or s.block == len(schedule):
                    s.result.wall_time = time.perf_counter() - start
                else:
                    keep.append(s)
            pool = keep
    finally:
        bar.close()
    return AttackRun("unlearndiffatk", results, wall_time=time.perf_counter() - start, artifacts={"batch_size": config.batch_size})
