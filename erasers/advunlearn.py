"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion
Models (Zhang et al., NeurIPS 2024). The text encoder is trained; the UNet stays frozen.

Bi-level training. Each outer step draws a concept prompt c and a noisy latent x_t from a partial DDIM
trajectory of the original model (guidance `start_guidance`), as ESD does, then:

  1. attack (after `warmup_iterations` plain erasure steps, every `attack_every` steps): k prefix
     embeddings delta in token-embedding space, warm-started from the previous attack, minimise
     || e(x_t, t, T_phi([delta; c])) - e(x_t, t, T_0(c)) ||^2 against the current encoder T_phi
     (`erasers.attacks.soft_prompt_attack`);
  2. defence: one step on the text encoder with
        || e(x_t, t, T_phi([delta; c])) - [e0 - eta (e(x_t, t, T_0(c)) - e0)] ||^2          (e0 = e(x_t, t, T_0("")))
      + gamma * || e(z_r, t, T_phi(c_r)) - e(z_r, t, T_0(c_r)) ||^2
     where c_r is a batch of `retain_batch` retain prompts and z_r their own partial trajectories
     (the official `--retain_train reg`).

Defaults. The outer loop follows the official code and README (1000 iterations, 200 warm-up, Adam lr
1e-5, eta 1, start guidance 3, gamma 0.3 for nudity / 0.5 for styles and objects, retain batch 5,
all 12 encoder layers + final layer norm, k = 1 prefix embedding). The inner attack defaults to our
fast schedule: sign-gradient ("fast AT") steps on a fixed (x_t, t, target) reused across the inner
steps; `AdvUnlearnConfig.official()` gives the official schedule (30 Adam steps, each on a freshly
sampled trajectory with recomputed targets). `benchmarks/advunlearn_cost.py` measures both side by
side: UNet evaluations, wall time and the UnlearnDiffAtk ASR each reaches.

Deliberate differences from the official code (OPTML-Group/AdvUnlearn):
  * prompt length is counted in BPE tokens (the official code counts words and silently drops the
    concept's last token, e.g. "nudity" = `nu` + `dity`);
  * attack gradients are zeroed every step and only the prefix gets gradients; the frozen UNet and
    the untrained encoder parameters never collect `.grad`;
  * no second copy of SD: the frozen conditionings T_0(c), T_0(""), T_0(c_r) are fixed strings, so
    they are encoded once before training; the UNet is shared and frozen;
  * checkpoints hold only the trained encoder tensors, the optimiser and the attack state, and load
    strictly; exports are standard `CLIPTextModel` folders (see `erasers/export.py`).
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.paths import PROMPTS
from studio.sampling import ddim_scheduler, encode_prompts, guided_noise, initial_latents, tokenize

from .attacks import SoftPromptConfig, encode_with_prefix, soft_prompt_attack
from .base import Concept, ErasureResult, TrainLoop, config_dict
from .stopping import stop_rule

RETAIN_FILE = PROMPTS / "retain_coco_objects.txt"

# the official --train_method names of partial encoders -> layer indices
OFFICIAL_LAYER_SETS = {
    "text_encoder_full": "all",
    "text_encoder_layer0": [0],
    "text_encoder_layer01": [0, 1],
    "text_encoder_layer012": [0, 1, 2],
    "text_encoder_layer0123": [0, 1, 2, 3],
    "text_encoder_layer01234": [0, 1, 2, 3, 4],
    "text_encoder_layer012345": [0, 1, 2, 3, 4, 5],
    "text_encoder_layer0_11": [0, 11],
    "text_encoder_layer01_1011": [0, 1, 10, 11],
    "text_encoder_layer012_91011": [0, 1, 2, 9, 10, 11],
}


@dataclass
class AdvUnlearnConfig:
    """AdvUnlearn (Zhang et al., NeurIPS 2024): adversarial training of the text encoder."""

    iterations: int = 1000  # outer (defender) steps
    warmup_iterations: int = 200  # plain erasure steps before the attack starts
    lr: float = 1e-5  # Adam, text encoder
    negative_guidance: float = 1.0  # eta of the ESD-style target
    start_guidance: float = 3.0  # CFG scale of the trajectories that make x_t and z_r
    num_inference_steps: int = 50  # DDIM steps of those trajectories
    retain_weight: float = 0.3  # gamma; the paper uses 0.3 for nudity, 0.5 for styles and objects
    retain_batch: int = 5  # retain prompts per step
    retain_set: str = "auto"  # "auto" (toy-world prompts on the toy model, else COCO objects), "coco", "toy", or a file path
    train_layers: str = "all"  # "all" (12 layers + final norm), "layers:0,1,2" / "layers:0-2", or an official name
    component: str = "all"  # "all", "attn" (self-attention only) or "mlp"
    attack_tokens: int = 1  # k prefix embeddings (--adv_prompt_num)
    attack_steps: int = 5  # inner steps (official: 30); 3 was cheaper but less robust (benchmarks/advunlearn_cost.py)
    attack_lr: float = 1e-3  # inner Adam lr
    attack_method: str = "fast_at"  # "pgd" (Adam on the gradient, official default) or "fast_at" (on its sign)
    attack_init: str = "latest"  # warm start from the previous attack ("latest") or "random" each time
    attack_every: int = 1  # outer steps between attacks (--adv_prompt_update_step)
    reuse_targets: bool = True  # inner steps reuse the outer step's (x_t, t, target) (official: a fresh trajectory each)
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.attack_method not in ("pgd", "fast_at"):
            raise ValueError(f"unknown attack_method {self.attack_method!r}; use 'pgd' or 'fast_at'")
        if self.component not in ("all", "attn", "mlp"):
            raise ValueError(f"unknown component {self.component!r}; use 'all', 'attn' or 'mlp'")
        if self.warmup_iterations > self.iterations:
            raise ValueError(f"warmup_iterations ({self.warmup_iterations}) exceeds iterations ({self.iterations})")

    @classmethod
    def official(cls, **kw) -> "AdvUnlearnConfig":
        """The official inner schedule: 30 Adam steps, each on a fresh trajectory with recomputed targets."""
        return cls(**{"attack_steps": 30, "attack_method": "pgd", "reuse_targets": False, **kw})


def layer_indices(spec: str, n_layers: int) -> list:
    spec = OFFICIAL_LAYER_SETS.get(spec, spec)
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, list):
        idx = spec
    else:
        m = re.fullmatch(r"layers:([\d,\- ]+)", str(spec))
        if not m:
            raise ValueError(
                f"unknown train_layers {spec!r}; use 'all', 'layers:0,1,2', 'layers:0-5' or an official name ({', '.join(OFFICIAL_LAYER_SETS)})"
            )
        idx = []
        for part in m.group(1).split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                idx += list(range(int(a), int(b) + 1))
            elif part:
                idx.append(int(part))
    bad = [i for i in idx if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"train_layers {spec!r} names layers {bad}; this text encoder has layers 0..{n_layers - 1}")
    return sorted(set(idx))


def trainable_parameter_names(text_encoder, train_layers: str = "all", component: str = "all") -> list:
    """Encoder parameters AdvUnlearn trains: the chosen layers (and the final layer norm with "all");
    token and position embeddings never train."""
    n_layers = text_encoder.config.num_hidden_layers
    layers = set(layer_indices(train_layers, n_layers))
    whole = OFFICIAL_LAYER_SETS.get(train_layers, train_layers) == "all"
    names = []
    for name, _ in text_encoder.named_parameters():
        m = re.search(r"encoder\.layers\.(\d+)\.(.*)", name)
        if m:
            if int(m.group(1)) not in layers:
                continue
            part = m.group(2)
            if component == "attn" and not part.startswith("self_attn."):
                continue
            if component == "mlp" and not part.startswith("mlp."):
                continue
            names.append(name)
        elif "final_layer_norm" in name and whole and component == "all":
            names.append(name)
    if not names:
        raise ValueError(f"train_layers={train_layers!r}, component={component!r} selects no parameters")
    return names


def retain_prompts(pipe, concept: Concept, retain_set: str = "auto") -> list:
    """The retain prompts: the concept's own list if given, else the shipped set, filtered against the concept."""
    if concept.retain:
        return list(concept.retain)
    from studio.paths import TOY_MODEL

    toy = Path(str(getattr(pipe, "name_or_path", "") or "")).resolve() == TOY_MODEL.resolve()
    kind = ("toy" if toy else "coco") if retain_set == "auto" else retain_set
    if kind == "toy":
        from studio.toyworld.grammar import COLOURS, SHAPES, STYLES

        prompts = [f"a {c} {s}" for s in SHAPES for c in COLOURS] + [f"a {st} {s}" for s in SHAPES for st in STYLES]
    elif kind == "coco":
        prompts = [line.strip() for line in RETAIN_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    else:
        path = Path(kind)
        if not path.is_file():
            raise ValueError(f"retain_set {kind!r} is not 'auto', 'coco', 'toy' or an existing file of prompts")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    words = concept_words(concept)
    kept = [p for p in prompts if not (set(re.findall(r"[a-z]+", p.lower())) & words)]
    if not kept:
        raise ValueError("every retain prompt mentions the concept; give retain prompts explicitly")
    return kept


def concept_words(concept: Concept) -> set:
    """Content words of the concept's prompts, with the toy grammar's synonyms where it knows them."""
    stop = {"a", "an", "the", "of", "photo", "picture", "on", "in", "with", "and", "background", "shape", "image"}
    words = {w for p in concept.prompts for w in re.findall(r"[a-z]+", p.lower())} - stop
    try:
        from studio.toyworld.grammar import CONCEPTS

        for w in list(words):
            if w in CONCEPTS:
                words |= {x for syn in CONCEPTS[w].synonyms for x in syn.split()}
    except ImportError:  # pragma: no cover
        pass
    return words


class AttackState(torch.nn.Module):
    """The inner attack's prefix, kept as buffers so checkpoints carry it (warm start survives a resume)."""

    def __init__(self, k: int, dim: int):
        super().__init__()
        self.register_buffer("delta", torch.zeros(k, dim))
        self.register_buffer("active", torch.zeros((), dtype=torch.long))


def check_room(tokenizer, concept: Concept, retain: list, attack_tokens: int) -> None:
    """Concept and retain prompts must leave room for the k adversarial prefix tokens (counted in BPE tokens)."""
    for p in retain:
        if len(tokenizer(p).input_ids) + attack_tokens > 77:
            raise ValueError(f"retain prompt {p[:50]!r} is too long")
    for p in concept.prompts:
        n = len(tokenizer(p).input_ids)
        if n + attack_tokens > 77:
            raise ValueError(f"concept prompt has {n} CLIP tokens; with {attack_tokens} adversarial tokens that exceeds 77. Shorten it.")


def trainable(module, names: list) -> dict:
    """Freeze `module` but for the parameters `names`; returns them by name."""
    module.requires_grad_(False)
    params = dict(module.named_parameters())
    trained = {n: params[n] for n in names}
    for p in trained.values():
        p.requires_grad_(True)
    return trained


def retain_loss(unet, te, tok, prompts: list, z_r, t, target_r):
    """The utility regulariser: the trained encoder's predictions on retain prompts stay the original model's."""
    cond_r = te(tokenize(tok, prompts).to(unet.device))[0]
    pred_r = unet(z_r, t, encoder_hidden_states=cond_r.to(unet.dtype), return_dict=False)[0]
    return F.mse_loss(pred_r.float(), target_r.float())


class Teacher:
    """The original model's side of a step (the UNet never trains here; conditionings are precomputed):
    partial DDIM trajectories and frozen predictions, their UNet evaluations counted in the loop."""

    def __init__(self, pipe, emb_null, config: "AdvUnlearnConfig", loop):
        self.pipe, self.emb_null, self.guidance, self.loop = pipe, emb_null, config.start_guidance, loop
        self.device = pipe.unet.device
        self.scheduler = ddim_scheduler(pipe)
        self.scheduler.set_timesteps(config.num_inference_steps, device=self.device)

    def trajectory(self, cond, seeds, till):
        """x_t after `till` DDIM steps of the original model under `cond`, CFG start_guidance; (x_t, t)."""
        scheduler, unet = self.scheduler, self.pipe.unet
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        x = initial_latents(self.pipe, len(seeds), gens).to(self.device) * scheduler.init_noise_sigma
        null = self.emb_null.expand(len(seeds), -1, -1)
        with torch.no_grad():
            for t in scheduler.timesteps[:till]:
                eps = guided_noise(unet, x, t, cond, null, self.guidance, scheduler)
                x = scheduler.step(eps, t, x).prev_sample
        self.loop.count_unet(2 * till * len(seeds))
        return x, scheduler.timesteps[till].to(self.device)

    def __call__(self, x, t, cond):
        with torch.no_grad():
            self.loop.count_unet(x.shape[0])
            return self.pipe.unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]


def attack(pipe, teacher: Teacher, state, attack_cfg, config, loop, prompt: str, c0, first: tuple, rng, gen, cancel) -> None:
    """The inner attack: a new adversarial prefix for `prompt` into `state` (warm-started from the last
    one); its batches are the step's own (x_t, t, e_c) with `reuse_targets`, fresh trajectories otherwise."""

    def batches(i):
        if config.reuse_targets:
            return first
        till_i = int(rng.integers(config.num_inference_steps))
        x_i, t_i = teacher.trajectory(c0, rng.integers(0, 2**31 - 1, size=1), till_i)
        return x_i, t_i, teacher(x_i, t_i, c0)

    init = state.delta if bool(state.active) else None
    delta, info = soft_prompt_attack(
        pipe.unet, pipe.text_encoder, pipe.tokenizer, prompt, batches, attack_cfg, init_embeds=init, generator=gen, cancel=cancel
    )
    loop.count_unet(2 * info["unet_evals"])  # forward + backward through the UNet
    if init is not None:  # how far this attack moved the warm-started prefix
        shifts = loop.stats.setdefault("attack_shifts", [])
        shifts.append(round(float((delta - init).norm()), 6))
    state.delta.copy_(delta)
    state.active.fill_(1)


def erase(
    pipe,
    concept: Concept,
    config: AdvUnlearnConfig | None = None,
    *,
    checkpoint_dir=None,
    callback=None,
    cancel=None,
    progress=True,
    stop_when=None,
) -> ErasureResult:
    """Erase `concept` by adversarially training `pipe.text_encoder` in place; see the module docstring."""
    config = config or AdvUnlearnConfig()
    concept.check(pipe.tokenizer)
    unet, te, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
    device = unet.device
    retain = retain_prompts(pipe, concept, config.retain_set)
    check_room(tok, concept, retain, config.attack_tokens)

    # frozen conditionings of the original model, encoded once
    with torch.no_grad():
        emb_c = encode_prompts(pipe, concept.prompts)  # (P, 77, D)
        emb_null = encode_prompts(pipe, [""])  # (1, 77, D)
        emb_r = encode_prompts(pipe, retain)  # (R, 77, D)
    unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    trained = trainable(te, trainable_parameter_names(te, config.train_layers, config.component))
    opt = torch.optim.Adam(trained.values(), lr=config.lr)
    state = AttackState(config.attack_tokens, te.get_input_embeddings().embedding_dim).to(device)
    attack_cfg = SoftPromptConfig(
        num_tokens=config.attack_tokens,
        steps=config.attack_steps,
        lr=config.attack_lr,
        method=config.attack_method,
        init=config.attack_init,
    )
    loop = TrainLoop(
        "AdvUnlearn",
        config.iterations,
        trained,
        {"opt": opt},
        seed=config.seed,
        checkpoint_dir=checkpoint_dir,
        stage="advunlearn",
        every=config.checkpoint_every,
        callback=callback,
        cancel=cancel,
        progress=progress,
        stop=stop_rule(stop_when, pipe, concept),
        extra_modules={"attack": state},
        meta={"method": "advunlearn", "config": config_dict(config), "concept": concept.prompts},
    )
    teacher = Teacher(pipe, emb_null, config, loop)
    trajectory, frozen = teacher.trajectory, teacher

    te.train()
    for step, rng, gen in loop:
        k = int(rng.integers(len(concept.prompts)))
        prompt, c0 = concept.prompts[k], emb_c[k : k + 1]
        till = int(rng.integers(config.num_inference_steps))
        x_t, t = trajectory(c0, rng.integers(0, 2**31 - 1, size=1), till)
        e_null, e_c = frozen(x_t, t, emb_null), frozen(x_t, t, c0)
        target = e_null - config.negative_guidance * (e_c - e_null)

        adversarial = step >= config.warmup_iterations
        if adversarial and (step - config.warmup_iterations) % config.attack_every == 0:
            attack(pipe, teacher, state, attack_cfg, config, loop, prompt, c0, (x_t, t, e_c), rng, gen, cancel)

        if adversarial and bool(state.active):
            cond = encode_with_prefix(te, tok, [prompt], state.delta)  # (1, 77, D)
        else:
            cond = te(tokenize(tok, [prompt]).to(device))[0]
        pred = unet(x_t, t, encoder_hidden_states=cond.to(unet.dtype), return_dict=False)[0]
        loss_unlearn = F.mse_loss(pred.float(), target.float())

        loss_retain, n_retain = torch.zeros((), device=device), 0
        if config.retain_weight > 0:
            idx = rng.choice(len(retain), size=min(config.retain_batch, len(retain)), replace=False)
            z_r, _ = trajectory(emb_r[idx], rng.integers(0, 2**31 - 1, size=len(idx)), till)
            loss_retain, n_retain = retain_loss(unet, te, tok, [retain[i] for i in idx], z_r, t, frozen(z_r, t, emb_r[idx])), len(idx)
        loss = loss_unlearn + config.retain_weight * loss_retain
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.reduce_gradients()
        opt.step()
        loop.count_unet(2 * (1 + n_retain))
        loop.log(loss=loss.item(), unlearn=loss_unlearn.item(), retain=loss_retain.item(), attack=bool(adversarial))
    te.eval()
    te.requires_grad_(False)
    stats = loop.finish()
    stats["attack_prefix_norm"] = float(state.delta.norm()) if bool(state.active) else 0.0
    shifts = loop.stats.get("attack_shifts", [])
    stats["attack_shift"] = float(sum(shifts) / len(shifts)) if shifts else 0.0
    weights = {n: p.detach().clone() for n, p in trained.items()}
    return ErasureResult("advunlearn", concept, config_dict(config), "text_encoder", weights, stats)


# several concepts into one model (erasers.several_concepts): each step draws its prompt from all of them
SEVERAL_CONCEPTS = "shared prompt set"

# erase until erased (erasers.stopping): this method's erase takes stop_when
STOP_WHEN = True

# The toy world's preset, chosen by the committed sweep (benchmarks/esd_sweep.py --methods advunlearn, results in
# benchmarks/results/advunlearn_sweep.md): max mean erasure of triangle and striped with retained accuracy >= 90% of
# the original's. SD's defaults above are for a 123M-parameter encoder and 1000 steps on a GPU; the toy trajectories
# use 20 DDIM steps (the toy model samples well with 20-25) and gamma 0.5, the paper's value for objects and styles.
TOY_PRESETS: dict = {
    "advunlearn": {"lr": 1e-4, "iterations": 150, "warmup_iterations": 30, "num_inference_steps": 20, "retain_weight": 0.5},
}
