"""STEREO: Search Thoroughly Enough, Robustly Erase Once (Srivatsan et al., CVPR 2025).

Two stages, on the UNet (koushiksrivats/robust-concept-erasing, the April 2025 code):

Stage 1, STE (search thoroughly enough): `rounds` times, erase the current prompt with an ESD step, then
attack the erased model with concept inversion (CCE's textual inversion of one new token, on a fresh
part of the gallery of concept images) and make the found token the next round's prompt:

    round k:  erase prompt_k for `iterations` steps:  target = e_k(c) - negative_guidance * (e_k(c) - e_k(""))
              (e_k: the model after round k-1, the original for k = 0; prompt_0 = the concept, prompt_k+1 = token t_k)
              t_k = textual inversion on the erased model, frozen (`erasers.attacks.cce.learn_token_embedding`)

Stage 2, REO (robustly erase once): back to the ORIGINAL UNet, one erasure of every collected concept
N = {c, t_0 .. t_{K-1}} with the anchor-based compositional target of the frozen original e_0:

    target = e_0("") + anchor_weight * (e_0(a) - e_0("")) - concept_weight * mean_{n in N} (e_0(n) - e_0(""))
    loss   = || e_theta(x_t, t, e) - target ||^2       (e ~ N stratified, a ~ the anchors, x_t from e_0's trajectory under e)

Anchors are prompts that show the concept in context (the official nudity anchors: "A nude figure in a
<setting>"); the composition keeps the scene and takes the concept out. `Concept.anchors` holds them; the
toy world's (`toy_target`) are the concept's captions from the training grammar's templates that the
evaluation never asks.

What is faithful about the official coefficients (the note's "two surprises"), decided here:
* The official STE target is `e(c) - (eta - 1) (e(c) - e(""))` with `--negative_guidance` eta = 2.0 (its APG
  wrapper is a no-op at APG-eta 1): at the default it is exactly `e("")`, "erase to the unconditional". Our
  `negative_guidance` has ESD's meaning (`erasers.esd`: e(c) - eta (e(c) - e(""))), so the official default
  is our 1.0, and 1.0 is the default: what the released code computes, not what its flag's name suggests.
* The official REO target at `--compositional_guidance_scale` s = 2 is `e("") + (s - 1)(anchor) + (-s - 1)
  mean(concepts)`: +1 on the anchor direction and -3 on the concepts'. The paper's equation is not readable
  here, so we keep what the released code computes as two plain weights, `anchor_weight` = 1 and
  `concept_weight` = 3 (s = 2), rather than a scale whose meaning is shifted by one in each term.

Defaults are the official argparse defaults: 4 rounds (README: 2), 200 steps per STE erasure and for REO,
AdamW lr 5e-6 (STE) and 2e-5 (REO), textual inversion 3000 steps of batch 1 at lr 5e-3 (not scaled),
object templates, `noxattn` (the README's nudity command; our esd-u), 50 DDIM steps at CFG 3 for x_t.
Deliberate differences from the official code:
* x_t comes from the frozen teacher's trajectory (as `erasers.esd`; the official samples it with the model
  being trained) and t is the timestep the trajectory stopped at (the official rescales k/50 to 1000 steps).
* The tokens are never added to the tokenizer: each is an embedding injected at a placeholder's position
  (`encode_with_token`); the result holds the UNet only, with the tokens' embeddings in its stats.
* Each round erases the newest token alone as the prompt (the placeholder by itself, as the official
  `prompt_k+1 = t_k`); the gallery is split into `rounds` disjoint parts, one per round.
* AdamW's state starts afresh each round (the official builds a new model and optimizer per round) and for
  REO; the random draws come from (seed, step), not from a seed reset inside every stage.
* Teacher passes are not CFG-batched at guidance 1 (the official runs and discards an unconditional half).
Progress, cancel, atomic checkpoints and exact resume through `erasers.base.TrainLoop`, over both stages.
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from studio.checkpoint import ParamDict
from studio.progress import relay
from studio.sampling import encode_prompts

from .attacks.cce import OBJECT_TEMPLATES, STYLE_TEMPLATES, CCEConfig, encode_with_token, initializer_embedding, learn_token_embedding
from .base import Concept, ErasureResult, TrainLoop, config_dict, freeze_all_but
from .esd import TRAIN_METHODS, FrozenUNet, sample_frozen, trainable_parameter_names

PLACEHOLDER = "<concept>"


@dataclass
class STEREOConfig:
    """STEREO (Srivatsan et al., CVPR 2025); the official argparse defaults (see the module docstring)."""

    train_method: str = "esd-u"  # the official noxattn (README, nudity); esd-x for the official xattn
    rounds: int = 4  # STE rounds = adversarial tokens collected (--n_iterations, --num_of_adv_concepts; README 2)
    iterations: int = 200  # ESD steps of each STE round, and of REO (--iterations)
    reo_iterations: int | None = None  # REO's steps when they differ from the rounds' (None: `iterations`, the official one flag)
    ste_lr: float = 5e-6  # AdamW, STE erasures
    reo_lr: float = 2e-5  # AdamW, REO
    negative_guidance: float = 1.0  # ESD's eta in STE; 1.0 = the official 2.0 (target e(""), see the docstring)
    anchor_weight: float = 1.0  # REO: + on the anchor's direction (official s - 1 at s = 2)
    concept_weight: float = 3.0  # REO: - on the mean concept direction (official s + 1 at s = 2)
    start_guidance: float = 3.0  # CFG of the trajectory that makes x_t
    num_inference_steps: int = 50  # its DDIM steps; x_t stops after U{0..steps-1}
    num_images: int = 500  # gallery: images of the concept by the original model (README: 500), split over rounds
    image_steps: int = 50
    image_guidance: float = 7.5
    image_prompts: tuple = ()  # gallery prompts; (): the concept's prompts
    ti_steps: int = 3000  # textual-inversion steps per round (--ti_max_train_steps)
    ti_lr: float = 5e-3  # --ci_lr (scaled by batch 1: unchanged)
    ti_batch_size: int = 1
    templates: str = "object"  # --learnable_property: "object" or "style"
    initializer: str = "person"  # --initializer_token (README, nudity); one token
    seed: int = 42
    checkpoint_every: int = 50

    def __post_init__(self):
        self.image_prompts = (self.image_prompts,) if isinstance(self.image_prompts, str) else tuple(self.image_prompts)
        if self.train_method not in TRAIN_METHODS:
            raise ValueError(f"unknown STEREO train_method {self.train_method!r}; use one of {', '.join(TRAIN_METHODS)}")
        for name in ("rounds", "iterations", "num_inference_steps", "num_images", "image_steps", "ti_steps", "ti_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"STEREO {name} must be a whole number >= 1, got {value!r}")
        if self.reo_iterations is not None and (
            isinstance(self.reo_iterations, bool) or not isinstance(self.reo_iterations, int) or self.reo_iterations < 1
        ):
            raise ValueError(f"STEREO reo_iterations must be a whole number >= 1 or None, got {self.reo_iterations!r}")
        if self.num_images < self.rounds:
            raise ValueError(f"the gallery ({self.num_images} images) must give each of the {self.rounds} rounds at least one image")
        for name in ("ste_lr", "reo_lr", "ti_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"STEREO {name} must be > 0, got {getattr(self, name)!r}")
        if self.templates not in ("object", "style"):
            raise ValueError(f"unknown STEREO templates {self.templates!r}; use 'object' or 'style'")

    @property
    def reo_steps(self) -> int:
        return self.iterations if self.reo_iterations is None else self.reo_iterations

    @property
    def total_steps(self) -> int:
        return self.rounds * self.iterations + self.reo_steps

    def inversion_config(self) -> CCEConfig:
        return CCEConfig(
            steps=self.ti_steps,
            batch_size=self.ti_batch_size,
            gradient_accumulation_steps=1,
            lr=self.ti_lr,
            scale_lr=True,
            templates=self.templates,
            initializer=self.initializer,
            placeholder=PLACEHOLDER,
        )


def _gallery(pipe, frozen_originals: dict, trained: dict, prompts: list, config: STEREOConfig) -> torch.Tensor:
    """The original model's images of the concept (the trained tensors swapped for the originals meanwhile, so a
    resumed run draws the same gallery from a pipe that was already changed)."""
    from studio.sampling import sample_pairs

    current = {n: p.detach().clone() for n, p in trained.items()}
    try:
        with torch.no_grad():
            for n, p in trained.items():
                p.copy_(frozen_originals[n])
        count = config.num_images  # seed i for image i, as the official
        return sample_pairs(
            pipe,
            [prompts[i % len(prompts)] for i in range(count)],
            list(range(count)),
            num_inference_steps=config.image_steps,
            guidance_scale=config.image_guidance,
            output_type="pt",
        )
    finally:
        with torch.no_grad():
            for n, p in trained.items():
                p.copy_(current[n])


def erase(
    pipe,
    concept: Concept,
    config: STEREOConfig | None = None,
    *,
    checkpoint_dir=None,
    callback=None,
    cancel=None,
    progress=True,
    stop_when=None,
) -> ErasureResult:
    """Erase `concept` from `pipe.unet` in place with STEREO (both stages); see the module docstring.
    `concept.anchors` are REO's anchor prompts (required)."""
    config = config or STEREOConfig()
    if stop_when is not None:
        from .stopping import check_method

        check_method("stereo")  # the clear error: a fixed schedule of stages
    concept.check(pipe.tokenizer)
    if not concept.anchors:
        raise ValueError(
            "STEREO's REO stage needs anchor prompts (the concept in context, e.g. 'a red triangle on a dark background'): "
            "pass Concept(..., anchors=[...]); erasers.toy_target('stereo', name) makes them for the toy world"
        )
    unet = pipe.unet
    names = trainable_parameter_names(unet, config.train_method)
    params = dict(unet.named_parameters())
    trained = {n: params[n] for n in names}
    originals = {n: p.detach().clone() for n, p in trained.items()}
    teacher = {n: p.detach().clone() for n, p in trained.items()}  # the model after the previous round
    dim = pipe.text_encoder.get_input_embeddings().embedding_dim
    tokens = torch.zeros(config.rounds, dim)  # t_0 .. t_{K-1}
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    freeze_all_but(unet, names)
    ste_opt = torch.optim.AdamW(trained.values(), lr=config.ste_lr)
    reo_opt = torch.optim.AdamW(trained.values(), lr=config.reo_lr)
    loop = TrainLoop(
        "STEREO",
        config.total_steps,
        trained,
        {"ste": ste_opt, "reo": reo_opt},
        seed=config.seed,
        checkpoint_dir=checkpoint_dir,
        stage="stereo",
        every=config.checkpoint_every,
        callback=callback,
        cancel=cancel,
        progress=progress,
        extra_modules={"original": ParamDict(originals), "teacher": ParamDict(teacher), "tokens": ParamDict({"tokens": tokens})},
        meta={"method": "stereo", "config": config_dict(config), "concept": concept.prompts, "anchors": concept.anchors},
        device="cpu",
    )
    for v in (*originals.values(), *teacher.values(), tokens):
        v.requires_grad_(False)
    loop.stats.setdefault("tokens", [])

    with torch.no_grad():
        emb = encode_prompts(pipe, concept.prompts)  # (P, 77, D)
        emb_null = encode_prompts(pipe, [""])  # (1, 77, D)
        emb_anchor = torch.cat([encode_prompts(pipe, concept.anchors[b : b + 64]) for b in range(0, len(concept.anchors), 64)])
    gallery = None
    if loop.step < config.rounds * config.iterations:
        gallery = _gallery(pipe, originals, trained, list(config.image_prompts) or concept.prompts, config)
        if loop.step == 0:  # counted once (a resumed run's stats already hold it)
            loop.count_unet(config.num_images * config.image_steps * (2 if config.image_guidance > 1.0 else 1))
    per_round = config.num_images // config.rounds
    templates = OBJECT_TEMPLATES if config.templates == "object" else STYLE_TEMPLATES
    ste_steps, I, K = config.rounds * config.iterations, config.iterations, config.rounds
    frozen_teacher, frozen_original = FrozenUNet(unet, teacher), FrozenUNet(unet, originals)
    # REO: erase concepts stratified over the steps (each about R / (K + 1) times), anchors spread likewise
    R = config.reo_steps
    plan = np.random.default_rng([config.seed, 7]).permutation(np.arange(R) % (K + 1))
    anchor_plan = np.random.default_rng([config.seed, 11]).permutation(np.arange(R) % len(concept.anchors))

    def token_cond(k: int) -> torch.Tensor:  # (1, 77, D): the token alone, as the official prompt_k+1 = t_k
        return encode_with_token(pipe.text_encoder, pipe.tokenizer, [PLACEHOLDER], tokens[k], PLACEHOLDER).to(unet.dtype)

    esd_cfg = replace_esd(config)
    unet.train()
    for step, rng, _gen in loop:
        seeds = [int(rng.integers(0, 2**31 - 1))]
        till = int(rng.integers(config.num_inference_steps))
        null = emb_null
        if step < ste_steps:  # ---- Stage 1: STE erasure of prompt_k
            k = step // I
            if step % I == 0:
                ste_opt.state.clear()  # a fresh optimizer each round, as the official
            with torch.no_grad():
                c = emb[int(rng.integers(len(emb))) :][:1] if k == 0 else token_cond(k - 1)
                x_t, t = sample_frozen(pipe, frozen_teacher, c, null, esd_cfg, seeds, till)
                e_null = frozen_teacher(x_t, t, null)[0]
                e_c = frozen_teacher(x_t, t, c)[0]
                target = e_c - config.negative_guidance * (e_c - e_null)
            opt, evals, phase = ste_opt, 2 * till + 3 + 1, "ste"
        else:  # ---- Stage 2: REO on the original model
            j = step - ste_steps
            if j == 0:
                with torch.no_grad():
                    for n, p in trained.items():
                        p.copy_(originals[n])
                reo_opt.state.clear()
            with torch.no_grad():
                negatives = [emb[:1]] + [token_cond(i) for i in range(K)]  # N = {c, t_0 .. t_{K-1}}
                e = int(plan[j])
                c = emb[int(rng.integers(len(emb))) :][:1] if e == 0 else negatives[e]
                a = emb_anchor[int(anchor_plan[j]) :][:1]
                x_t, t = sample_frozen(pipe, frozen_original, c, null, esd_cfg, seeds, till)
                e_null = frozen_original(x_t, t, null)[0]
                e_a = frozen_original(x_t, t, a)[0]
                e_n = torch.stack([frozen_original(x_t, t, n_)[0] for n_ in negatives]).mean(0)
                target = e_null + config.anchor_weight * (e_a - e_null) - config.concept_weight * (e_n - e_null)
            opt, evals, phase = reo_opt, 2 * till + 2 + len(negatives) + 1, "reo"
        pred = unet(x_t, t, encoder_hidden_states=c, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.reduce_gradients()
        opt.step()
        loop.count_unet(evals)
        loop.log(loss=loss.item(), t=int(t), phase=phase)

        if step < ste_steps and step % I == I - 1:  # end of round k: attack the erased model, collect t_k
            k = step // I
            unet.eval()
            part = gallery[(k * per_round) : (k + 1) * per_round]
            icfg = replace(config.inversion_config(), seed=config.seed + k)
            init = initializer_embedding(pipe.text_encoder, pipe.tokenizer, config.initializer)
            v, stats = learn_token_embedding(
                pipe, part, templates, icfg, init=init, callback=relay(callback, round=k + 1), cancel=cancel, stage="stereo-inversion"
            )
            unet.train()
            with torch.no_grad():
                tokens[k].copy_(v)
                for n, p in trained.items():
                    teacher[n].copy_(p.detach())
            loop.stats["tokens"].append(
                {"round": k + 1, "norm": stats["embedding_norm"], "final_loss": float(np.mean(stats["losses"][-20:])), "images": len(part)}
            )
            loop.count_unet(stats["unet_evals"])
    unet.eval()
    unet.requires_grad_(False)
    stats = loop.finish()
    stats["tokens"] = loop.stats["tokens"]
    stats["token_embeddings"] = [[round(float(x), 6) for x in row] for row in tokens]
    weights = {n: p.detach().clone() for n, p in trained.items()}
    return ErasureResult("stereo", concept, config_dict(config), "unet", weights, stats)


def replace_esd(config: STEREOConfig):
    """The ESD settings `sample_frozen` reads (x_t's trajectory)."""
    from .esd import ESDConfig

    return ESDConfig(train_method=config.train_method, start_guidance=config.start_guidance, num_inference_steps=config.num_inference_steps)


def toy_target(name: str) -> Concept:
    """The toy world's STEREO target: the concept's erasure prompts, with anchors that show it in context: its
    captions from the training grammar's templates that the evaluation's prompt sets never use (every colour,
    style and background), so no anchor is an evaluation prompt."""
    import itertools

    from studio.toyworld.captions import _EVAL_TEMPLATES, article, erasure_prompts
    from studio.toyworld.grammar import ATTRIBUTES, TEMPLATES
    from studio.toyworld.grammar import concept as toy

    c = toy(name)
    evaluated = set(_EVAL_TEMPLATES.get(c.attribute, ()))
    templates = [t for t in TEMPLATES if "{" + c.attribute + "}" in t and t not in evaluated and t.count("{") >= 3]
    others = [a for a in ATTRIBUTES if a != c.attribute]
    anchors = []
    for values in itertools.product(*[ATTRIBUTES[a] for a in others]):
        fill = {**dict(zip(others, values)), c.attribute: c.name}
        anchors += [article(t.format(**fill)) for t in templates]
    anchors = list(dict.fromkeys(anchors))
    rng = np.random.default_rng(0)
    anchors = [anchors[i] for i in rng.permutation(len(anchors))][:48]
    return Concept(erasure_prompts(c.name), anchors=anchors, name=c.name)


# erase until erased (erasers.stopping): STEREO's stages are a fixed schedule
STOP_WHEN = "runs a fixed schedule of stages (STE rounds, then REO)"

# The toy world's preset: esd-x at lr 1e-3 for 50 steps per round (as erasers.esd's toy preset), 2 rounds (the
# README's), a 16-image gallery, 20-step DDIM trajectories, 80 inversion steps of batch 4; REO at lr 1e-3 for 100
# steps, chosen by the committed sweep `benchmarks/preset_sweep.py --method stereo --concepts triangle,striped`
# (reo_lr 1e-3 / 3e-3 x REO 25 / 50 / 100 steps; criterion of the other methods: the worst concept's erasure with
# retained >= 90% of the original's): triangle shown 25% (4/16) [10, 49], striped 81% (13/16) [57, 93], retained
# ratios 1.00 and 0.94; every lr-3e-3 setting erased more, with a worst retained ratio of 0.62 or less. See
# benchmarks/results/preset_sweep_stereo.md. The earlier preset (REO 50 steps) against CCE, triangle, 20 direct
# prompts (seeds 5000-5019, 20 DDIM steps): judged triangle 45% (9/20) [26, 66], CCE ASR 75% (15/20) [53, 89],
# the token alone 65% (13/20) [43, 82], the same as against ESD-x (75% (15/20), token alone 70% (14/20)): on the
# toy world at this budget STEREO resists CCE no better than ESD-x.
# One round with 40 inversion steps on 8 images leaves 79% of the toy tests' triangle images (ESD-x's test: <= 30%).
TOY_PRESETS: dict = {
    "stereo": {
        "train_method": "esd-x",
        "rounds": 2,
        "iterations": 50,
        "ste_lr": 1e-3,
        "reo_lr": 1e-3,
        "reo_iterations": 100,
        "num_inference_steps": 20,
        "num_images": 16,
        "image_steps": 20,
        "ti_steps": 80,
        "ti_batch_size": 4,
        "ti_lr": 5e-3,
        "initializer": "shape",
    }
}
