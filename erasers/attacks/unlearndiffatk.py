"""UnlearnDiffAtk: discrete prefix tokens against the attacked model's own denoising loss (Zhang et al., ECCV 2024)."""

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.progress import event
from studio.sampling import MAX_TOKENS, Cancelled, is_cancelled

from .common import (
    AttackResult,
    _exact,
    _judge,
    _pre_attack,
    _unwrap,
    adversarial_text,
    encode_with_prefix,
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
    tau = (v.sum(-1, keepdim=True) - 1) / n  # (..., 1)
    size = torch.full_like(tau, n)
    for _ in range(n):
        support = v > tau  # (..., V)
        new_size = support.sum(-1, keepdim=True).to(v.dtype)
        tau = (torch.where(support, v, 0).sum(-1, keepdim=True) - 1) / new_size
        if torch.equal(new_size, size):
            break
        size = new_size
    return (v - tau).clamp_min(0)


class _SampleOneHot(torch.autograd.Function):
    """Straight-through sampling: a hard one-hot drawn from each row of `probs` `(k, V)` forward,
    the incoming gradient clipped to [-1, 1] (hardtanh) backward, as the official `STERandSelect`."""

    @staticmethod
    def forward(ctx, probs, generator):
        ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (k,)
        return F.one_hot(ids, probs.shape[-1]).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad):
        return F.hardtanh(grad), None


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
    n = len(tok(text, truncation=False).input_ids)
    if n > MAX_TOKENS:
        entry["skipped"] = f"the decoded prompt has {n} tokens, over {MAX_TOKENS}"
        result.history.append(entry)
        return False
    ok, image, evals = _judge(pipe, text, is_success, seed, config.num_inference_steps, config.guidance_scale, cancel)
    entry["success"] = ok
    result.history.append(entry)
    result.adversarial_prompt, result.image, result.adversarial_tokens = text, image, ids
    result.exact_tokens = _exact(tok, text, ids, prompt)
    result.unet_evals += evals
    result.generations += 1
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
                onehot = _SampleOneHot.apply(probs, gen)  # (k, V)
                cond = encode_with_prefix(te, tok, [prompt], onehot @ E).to(dtype)  # (1, 77, D)
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
