"""AdvUnlearn's inner attack: continuous prefix embeddings (Zhang et al., NeurIPS 2024)."""

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.progress import event
from studio.sampling import Cancelled, is_cancelled, sample

from .common import AttackResult, _pre_attack, _random_token_embeddings, _unwrap, encode_with_prefix

# ----------------------------------------------------------------------------- soft-prompt attack


@dataclass
class SoftPromptConfig:
    """AdvUnlearn's inner attack (Zhang et al., NeurIPS 2024; `utils/attack_util.py::soft_prompt_attack`).

    Defaults are the official argparse defaults. The official README command passes
    `--attack_init random`; the code default, and the warm start AdvUnlearn's loop relies on, is "latest".
    """

    num_tokens: int = 1  # k prefix embeddings after SOT (--adv_prompt_num)
    steps: int = 30  # Adam steps per attack (--attack_step)
    lr: float = 1e-3  # Adam learning rate (--attack_lr)
    method: str = "pgd"  # "pgd": Adam on the gradient; "fast_at": Adam on its sign (--attack_method)
    init: str = "latest"  # "latest": warm start from the previous prefix (random the first time); "random": k random tokens' embeddings

    def __post_init__(self):
        if self.method not in ("pgd", "fast_at"):
            raise ValueError(f"unknown soft-prompt attack method {self.method!r}; use 'pgd' or 'fast_at'")
        if self.init not in ("latest", "random"):
            raise ValueError(f"unknown init {self.init!r}; use 'latest' (warm start) or 'random'")
        if self.num_tokens < 1 or self.steps < 1:
            raise ValueError(f"num_tokens and steps must be >= 1, got {self.num_tokens} and {self.steps}")


def soft_prompt_attack(
    unet,
    text_encoder,
    tokenizer,
    prompt: str | list[str],
    batches,
    config: SoftPromptConfig | None = None,
    *,
    init_embeds: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback=None,
    cancel=None,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Find k prefix embeddings that bring the concept back; see `SoftPromptConfig`.

    Minimises `|| unet(z_t, t, encode_with_prefix(prompt, delta)) - target_eps ||^2` (mean squared
    error) over `delta` `(k, D)`. `batches(step) -> (z_t, t, target_eps)` supplies each step's noisy
    latents `(B, 4, h, w)`, timestep (int or `(B,)`) and target `(B, 4, h, w)`; in AdvUnlearn z_t comes
    from a partial DDIM trajectory of the frozen model and the target is the frozen model's
    prediction for the concept. `init_embeds` `(k, D)` is the previous prefix (used when
    `config.init == "latest"`). UNet and encoder get no `.grad`, whatever their `requires_grad`.

    Returns `(delta, info)`: `delta` `(k, D)` float32, detached; `info = {"losses": [...],
    "unet_evals": n, "steps": n, "init": "random" | "latest", "init_tokens": ids | None}` (UNet evaluations of the attack
    itself, not those `batches` spends on targets). `callback` gets `{"stage": "soft-prompt", "step",
    "total", "i", "loss", "prefix"}` after each step.
    """
    config = config or SoftPromptConfig()
    device = _unwrap(text_encoder).get_input_embeddings().weight.device
    if config.init == "latest" and init_embeds is not None:
        if init_embeds.shape[-2] != config.num_tokens:
            raise ValueError(
                f"init_embeds has {init_embeds.shape[-2]} prefix embeddings; the config asks for num_tokens={config.num_tokens}"
            )
        delta, init, init_tokens = init_embeds.detach().float().clone().to(device), "latest", None
    else:
        delta, init_tokens = _random_token_embeddings(text_encoder, tokenizer, config.num_tokens, generator)
        init, init_tokens = "random", init_tokens.tolist()
    delta.requires_grad_(True)  # (k, D)
    optimizer = torch.optim.Adam([delta], lr=config.lr)
    losses, unet_evals, dtype = [], 0, unet.dtype
    for i in tqdm(range(config.steps), desc="soft-prompt attack", disable=not progress, leave=False):
        if is_cancelled(cancel):
            raise Cancelled(f"soft-prompt attack cancelled at step {i} of {config.steps}")
        z_t, t, target = batches(i)
        prompts = [prompt] * z_t.shape[0] if isinstance(prompt, str) else list(prompt)
        cond = encode_with_prefix(text_encoder, tokenizer, prompts, delta).to(dtype)  # (B, 77, D)
        eps = unet(z_t, t, encoder_hidden_states=cond, return_dict=False)[0]  # (B, 4, h, w)
        loss = F.mse_loss(eps.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        (grad,) = torch.autograd.grad(loss, [delta])  # the prefix's gradient only
        delta.grad = grad.sign() if config.method == "fast_at" else grad
        optimizer.step()
        losses.append(loss.item())
        unet_evals += z_t.shape[0]
        if callback is not None:
            callback(event("soft-prompt", i + 1, config.steps, i=i, loss=losses[-1], prefix=delta.detach().clone()))
    return delta.detach(), {"losses": losses, "unet_evals": unet_evals, "steps": config.steps, "init": init, "init_tokens": init_tokens}


# ----------------------------------------------------------------------------- as an evaluation attack


@dataclass
class SoftPromptAttackConfig:
    """The soft-prompt attack as a judged evaluation attack (the matrix's "soft prompt" column).

    The inner attack of AdvUnlearn (`soft_prompt_attack`, its official defaults: 1 prefix embedding, 30
    Adam steps at lr 1e-3, PGD) against UnlearnDiffAtk's objective: the erased model's own denoising
    loss on the ORIGINAL model's image of the prompt (`target_latents`), one random timestep per step.
    The prefix starts from a random token's embedding (no warm start across prompts, so every
    prompt-seed pair is attacked alone) and is judged once, at the end, with the image of
    `[SOT, prefix, prompt]` (seed `seed`). A continuous embedding is no text: the attack measures
    white-box robustness in embedding space, an upper bound for any prompt attack of that length.
    """

    num_tokens: int = 1  # --adv_prompt_num
    steps: int = 30  # --attack_step (the budget knob)
    lr: float = 1e-3  # --attack_lr
    method: str = "pgd"
    num_inference_steps: int = 50  # DDIM steps of the judged images
    guidance_scale: float = 7.5

    def __post_init__(self):
        SoftPromptConfig(num_tokens=self.num_tokens, steps=self.steps, lr=self.lr, method=self.method, init="random")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")

    @classmethod
    def toy(cls) -> "SoftPromptAttackConfig":
        """The toy world's budget: 25 DDIM steps for the judged images (the toy samples well with 20-25)."""
        return cls(num_inference_steps=25)

    def unet_budget(self) -> int:
        """The most UNet evaluations per prompt: the steps, and two judged images (before, after)."""
        return self.steps + 2 * self.num_inference_steps * (2 if self.guidance_scale > 1.0 else 1)


def soft_prompt(
    pipe, prompt, target_latents, is_success, config=None, *, seed=0, callback=None, cancel=None, progress=True
) -> AttackResult:
    """Attack `prompt` on `pipe` (the erased model) with a continuous prefix; see `SoftPromptAttackConfig`."""
    config = config or SoftPromptAttackConfig()
    start = time.perf_counter()
    result = _pre_attack("soft-prompt", pipe, prompt, is_success, seed, config, callback, cancel, step=0, total=config.steps)
    result.attack = "soft-prompt"
    if result.pre_success:
        result.wall_time = time.perf_counter() - start
        return result
    if target_latents is None:
        raise ValueError("the soft-prompt attack needs target_latents (the original model's image of the prompt)")
    unet, scheduler = pipe.unet, pipe.scheduler
    device = unet.device
    gen = torch.Generator("cpu").manual_seed(int(seed))
    x0 = target_latents.to(device, torch.float32)
    alphas = scheduler.alphas_cumprod.to(torch.float32)
    total_t = int(scheduler.config.num_train_timesteps)

    def batches(i):
        t = int(torch.randint(total_t, (1,), generator=gen))
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = alphas[t]
        z_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(unet.dtype)
        return z_t, torch.tensor([t], device=device), noise

    inner = SoftPromptConfig(num_tokens=config.num_tokens, steps=config.steps, lr=config.lr, method=config.method, init="random")
    delta, info = soft_prompt_attack(
        unet, pipe.text_encoder, pipe.tokenizer, prompt, batches, inner, generator=gen, callback=callback, cancel=cancel, progress=progress
    )
    with torch.no_grad():
        cond = encode_with_prefix(pipe.text_encoder, pipe.tokenizer, [prompt], delta)
    image = sample(
        pipe,
        prompt_embeds=cond,
        seed=seed,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        cancel=cancel,
    ).images[0]
    verdict = np.asarray(is_success([image]), dtype=bool).reshape(-1)
    ok = bool(verdict[0])
    result.success = ok
    result.image = image
    result.adversarial_prompt = f"<soft x{config.num_tokens}> {prompt}"
    result.exact_tokens = False  # a continuous embedding has no text
    result.adversarial_tokens = info["init_tokens"] or []
    result.gradient_steps = info["steps"]
    result.losses = info["losses"]
    result.unet_evals += info["unet_evals"] + config.num_inference_steps * (2 if config.guidance_scale > 1.0 else 1)
    result.generations += 1
    result.prefix = [[round(float(x), 6) for x in row] for row in delta.detach().float().reshape(config.num_tokens, -1).cpu()]
    result.history.append({"prompt": result.adversarial_prompt, "success": ok})
    if callback is not None:
        callback(event("soft-prompt", config.steps, config.steps, phase="eval", prompt=result.adversarial_prompt, success=ok, image=image))
    result.wall_time = time.perf_counter() - start
    return result
