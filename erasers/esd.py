"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

The UNet is fine-tuned so that its prediction for the concept follows the frozen model's
negatively guided prediction:

    x_t    = DDIM (eta 0, `num_inference_steps`, guidance `start_guidance`, prompt c) run by the frozen
             UNet from random noise and stopped after k ~ U{0..steps-1} steps; t = the k-th timestep
    target = e*(x_t, c_from, t) - eta * (e*(x_t, c, t) - e*(x_t, "", t))     (c_from = c unless an anchor is given)
    loss   = || e_theta(x_t, c, t) - target ||^2

Variants (which UNet parameters train; only Linear and Conv2d weights/biases, as the official
diffusers-era code `esd_sd.py`, so norm layers never train):
    esd-x         the cross-attention modules (`attn2`): for styles and specific concepts
    esd-u         every Linear/Conv outside `attn2`: for global concepts (nudity, objects)
    esd-x-strict  `attn2.to_k` and `attn2.to_v` only
    esd-all       every Linear/Conv

Defaults are those of the official diffusers-era code (200 iterations, Adam lr 5e-5, eta 2,
start guidance 3, 50 DDIM steps, batch 1); the 2023 CompVis code used 1000 iterations, lr 1e-5,
eta 1 (`ESDConfig.compvis()`). Deliberate differences from the official code:
  * x_t comes from the frozen model (as the diffusers-era code; the CompVis code sampled it with the
    model being trained) and t is exactly the timestep the trajectory stopped at.
  * No second copy of the pipeline or of the UNet: the frozen predictions run the same UNet with the
    original values of the trained tensors swapped in (`torch.func.functional_call`), so the extra
    memory is one copy of the trained tensors (about 5% of the UNet for esd-x).
  * Height and width default to the model's own resolution (the official code hard-codes 1024 for SD 1.4).
  * A concept may have several prompts; one is drawn per iteration.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from studio.checkpoint import ParamDict
from studio.sampling import ddim_scheduler, encode_prompts, guided_noise, initial_latents

from .base import Concept, ErasureResult, TrainLoop, config_dict, freeze_all_but
from .stopping import stop_rule

TRAIN_METHODS = ("esd-x", "esd-u", "esd-x-strict", "esd-all")


@dataclass
class ESDConfig:
    """ESD (Gandikota et al., ICCV 2023); defaults of the official diffusers-era code `esd_sd.py`."""

    train_method: str = "esd-x"  # esd-x | esd-u | esd-x-strict | esd-all
    iterations: int = 200  # training steps (the 2023 CompVis code: 1000)
    lr: float = 5e-5  # Adam learning rate (CompVis code: 1e-5)
    negative_guidance: float = 2.0  # eta (CompVis code: 1.0; checkpoint names like "ESDx1" give it)
    start_guidance: float = 3.0  # CFG scale of the trajectory that makes x_t
    num_inference_steps: int = 50  # DDIM steps of that trajectory; x_t stops after U{0..steps-1} of them
    batch_size: int = 1  # trajectories per iteration
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.train_method not in TRAIN_METHODS:
            raise ValueError(f"unknown ESD train_method {self.train_method!r}; use one of {', '.join(TRAIN_METHODS)}")
        if self.iterations < 1 or self.lr <= 0 or self.num_inference_steps < 1:
            raise ValueError("ESD needs iterations >= 1, lr > 0 and num_inference_steps >= 1")

    @classmethod
    def compvis(cls, **kw) -> "ESDConfig":
        """The settings of the original 2023 CompVis code (train-esd.py)."""
        return cls(**{"iterations": 1000, "lr": 1e-5, "negative_guidance": 1.0, **kw})


def trainable_parameter_names(unet, train_method: str) -> list:
    """Names of the UNet parameters a variant trains (weights and biases of Linear and Conv2d modules)."""
    names = []
    for mod_name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        in_xattn = ".attn2." in f".{mod_name}."
        if train_method == "esd-x":
            keep = in_xattn
        elif train_method == "esd-u":
            keep = not in_xattn
        elif train_method == "esd-x-strict":
            keep = in_xattn and mod_name.endswith(("to_k", "to_v"))
        elif train_method == "esd-all":
            keep = True
        else:
            raise ValueError(f"unknown ESD train_method {train_method!r}; use one of {', '.join(TRAIN_METHODS)}")
        if keep:
            names += [f"{mod_name}.{p}" for p, _ in module.named_parameters(recurse=False)]
    if not names:
        raise ValueError(f"{train_method} selects no parameters in this UNet (does it have cross-attention?)")
    return names


class FrozenUNet:
    """The original UNet's predictions, computed by the trained UNet with the original tensors swapped in."""

    def __init__(self, unet, originals: dict):
        self.unet, self.originals = unet, originals

    @torch.no_grad()
    def __call__(self, x, t, encoder_hidden_states=None, return_dict=False):
        # same call signature as UNet2DConditionModel with return_dict=False, so it drops into guided_noise
        return functional_call(self.unet, self.originals, (x, t), {"encoder_hidden_states": encoder_hidden_states, "return_dict": False})


def erase(
    pipe,
    concept: Concept,
    config: ESDConfig | None = None,
    *,
    checkpoint_dir=None,
    callback=None,
    cancel=None,
    progress=True,
    stop_when=None,
) -> ErasureResult:
    """Erase `concept` from `pipe.unet` in place with ESD; returns the changed weights. See the module docstring."""
    config = config or ESDConfig()
    concept.check(pipe.tokenizer)
    unet = pipe.unet
    names = trainable_parameter_names(unet, config.train_method)
    params = dict(unet.named_parameters())
    trained = {n: params[n] for n in names}
    originals = {n: p.detach().clone() for n, p in trained.items()}
    frozen = FrozenUNet(unet, originals)
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    freeze_all_but(unet, names)
    opt = torch.optim.Adam(trained.values(), lr=config.lr)

    loop = TrainLoop(
        f"ESD ({config.train_method})",
        config.iterations,
        trained,
        {"opt": opt},
        seed=config.seed,
        checkpoint_dir=checkpoint_dir,
        stage=config.train_method,
        every=config.checkpoint_every,
        callback=callback,
        cancel=cancel,
        progress=progress,
        stop=stop_rule(stop_when, pipe, concept),
        extra_modules={"original": ParamDict(originals)},
        meta={"method": config.train_method, "config": config_dict(config), "concept": concept.prompts},
        device="cpu",
    )
    # the original tensors come back from the checkpoint on resume, even if `pipe` was already changed
    for v in originals.values():
        v.requires_grad_(False)

    with torch.no_grad():
        prompts = concept.prompts
        anchors = concept.anchors
        emb = encode_prompts(pipe, prompts)  # (P, 77, D)
        emb_from = encode_prompts(pipe, anchors) if anchors else emb
        emb_null = encode_prompts(pipe, [""])  # (1, 77, D)
    unet.train()
    b = config.batch_size
    for step, rng, gen in loop:
        k = int(rng.integers(len(prompts)))
        till = int(rng.integers(config.num_inference_steps))  # DDIM steps before x_t
        c = emb[k : k + 1].expand(b, -1, -1)
        j = int(rng.integers(len(emb_from)))
        c_from = emb_from[j : j + 1].expand(b, -1, -1) if anchors else c
        null = emb_null.expand(b, -1, -1)
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=b)]
        with torch.no_grad():
            x_t, t = sample_frozen(pipe, frozen, c, null, config, seeds, till)
            e_null = frozen(x_t, t, null)[0]
            e_c = frozen(x_t, t, c)[0]
            e_from = frozen(x_t, t, c_from)[0] if anchors else e_c
            target = e_from - config.negative_guidance * (e_c - e_null)
        pred = unet(x_t, t, encoder_hidden_states=c, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.reduce_gradients()
        opt.step()
        loop.count_unet(2 * till + (4 if anchors else 3) + 1)
        loop.log(loss=loss.item(), t=int(t))
    unet.eval()
    unet.requires_grad_(False)
    stats = loop.finish()
    weights = {n: p.detach().clone() for n, p in trained.items()}
    return ErasureResult(config.train_method, concept, config_dict(config), "unet", weights, stats)


def sample_frozen(pipe, frozen: FrozenUNet, cond, uncond, config: ESDConfig, seeds: list, till: int):
    """x_t after `till` DDIM steps of the frozen model under `cond` (CFG `start_guidance`), and its timestep."""
    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(config.num_inference_steps, device=pipe.unet.device)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = initial_latents(pipe, len(seeds), gens).to(pipe.unet.device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps[:till]:
        eps = guided_noise(frozen, latents, t, cond, uncond, config.start_guidance, scheduler)
        latents = scheduler.step(eps, t, latents).prev_sample
    t = scheduler.timesteps[till]
    return latents, t.to(pipe.unet.device).expand(len(seeds))


# several concepts into one model (erasers.several_concepts): each step draws its prompt from all of them
SEVERAL_CONCEPTS = "shared prompt set"

# erase until erased (erasers.stopping): this method's erase takes stop_when
STOP_WHEN = True

# The toy world's presets (method -> config fields), chosen by the committed sweep
# benchmarks/esd_sweep.py (results in benchmarks/results/esd_sweep.md). SD's defaults above are for a
# 860M-parameter UNet; the toy UNet is tiny and needs its own learning rate and budget. Criterion: max mean
# erasure of triangle and striped with retained accuracy >= 90% of the original's. ESD-u on the toy model is
# unstable above lr 1e-4 (it wrecks the other concepts); neither variant erases the style "striped" at a budget
# that keeps the others. esd-x-strict's is the criterion's choice of benchmarks/preset_sweep.py on every shape and
# style (full evaluation: eligible, mean erasure 23%, worst 0%, against the official settings' 1%); esd-all was not
# swept in full and keeps the official settings.
TOY_PRESETS: dict = {
    "esd-x": {"lr": 1e-3, "iterations": 50},
    "esd-u": {"lr": 1e-4, "iterations": 200},
    "esd-x-strict": {"lr": 1e-3, "iterations": 50},
}
