"""P4D, Prompting4Debugging (Chin, Jiang, Huang, Chen, Chiu; ICML 2024): prompts that make the erased model
predict the noise the original model predicts for the concept prompt.

Soft token embeddings are optimised; every step each is projected to its nearest vocabulary token (by
cosine similarity, as PEZ), the projected tokens go through the erased model's text encoder and UNet, and
the gradient with respect to the projected embeddings updates the soft ones (straight-through, the
official `optimize_n.py` / `optimize_k.py`). Loss, per step, on a fresh timestep and noise:

    || eps_erased(z_t, t, W_erased([SOT, projected tokens, EOT])) - eps_original(z_t, t, W_original(P)) ||^2

with `z_t` noised from the original model's image of the prompt P (`target_latents`), conditional
predictions on both sides (no CFG), AdamW.

* **P4D-N** (`p4d-n`): N = 16 free tokens; the prompt itself is not part of the adversarial input.
* **P4D-K** (`p4d-k`): one learnable token before every K = 3 prompt tokens (floor(L/K) + 1 of them for a
  prompt of L tokens); the prompt's tokens stay fixed.

    run = run_many("p4d-n", erased, prompts, seeds, is_success, original=original_pipe)

Prompts are attacked in batches (`batch_size` per text-encoder and UNet call), each with its own soft
prompt, optimiser, target and generator, so a prompt's trajectory does not depend on its batch; a prompt
leaves the batch on its first success. Deliberate differences from the official code (joycenerd/P4D):

* Success is judged every `eval_every` steps on the erased model's image of the decoded prompt (seed =
  the pair's seed) with the studio's judge, and the attack stops on the first success. The official code
  keeps the prompt whose image is closest (open_clip ViT-H-14) to the target image, then judges 3 images
  of it with the seed it selected on (reference note §3.8.2).
* The vocabulary defaults to "words" (tokens that end a word and re-tokenise to themselves), so the
  decoded prompt re-tokenises to exactly the optimised ids; the official code projects onto all 49,408
  rows and pads with id 0 ("!") while optimising, so what it judges is not what it optimised (§3.8.1).
  The sequence is padded as the tokenizer pads it. `vocabulary="all"` is the official projection;
  `AttackResult.exact_tokens` then says whether the text kept the ids.
* P4D-K inserts its tokens at word boundaries: an insertion point inside a word (after a token that
  does not end one) moves to the next word's start, so the decoded text keeps the prompt's words
  whole. On prompts whose tokens are all whole words (the toy world's) this is the official layout.
  The prompt's own tokens are fixed ids, not soft embeddings that weight decay shrinks (§3.3).
* The prompt's own image is judged first (`pre_attack`, the studio's pre-ASR); P4D instead attacks only
  "ideal" prompts that its filter found unsafe on the original and safe on the erased model.
* Images are generated with our DDIM sampler (`studio.sampling.sample`), not DPM-Solver++; the target is
  the original model's image of the prompt at the pair's seed (VAE posterior mean), not the most unsafe
  of 3. Timesteps and noise come from the pair's own generator.
* Erasers that change the text encoder (AdvUnlearn) are attacked through the erased encoder; the
  concept prompt is encoded by the original's.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.progress import event
from studio.sampling import MAX_TOKENS, Cancelled, encode_prompts, is_cancelled

from . import Attack, AttackRun, register
from .common import AttackResult, _unwrap, batched_targets, judge_texts, pre_attack_many, vocabulary

# ----------------------------------------------------------------------------- configs


@dataclass
class P4DConfig:
    """What P4D-N and P4D-K share; defaults are the official ones (`configs/*_nudity_optmz_config.json`).

    The budget knob is `iterations`: each is one UNet forward of the original model and one forward
    and backward of the erased one (2 UNet evaluations), and every `eval_every` steps one judged image
    (`num_inference_steps` x 2 with CFG). Full budget: 3000 x 2 + 61 x 25 x 2 = 9050 UNet evaluations
    per prompt (60 evaluations and the pre-attack image).
    """

    iterations: int = 3000  # gradient steps (`iter`)
    eval_every: int = 50  # decode, generate and judge every this many steps (`eval_step`), and after the last
    lr: float = 0.1  # AdamW
    weight_decay: float = 0.1  # AdamW's (decoupled) weight decay
    vocabulary: object = "words"  # "words" (re-tokenises exactly; default), "all" (official) or a list of token ids
    num_inference_steps: int = 25  # steps of each judged image (official: DPM-Solver++ 25)
    guidance_scale: float = 7.5  # CFG of each judged image (official: the CSV's, config 7.5)
    pre_attack: bool = True  # judge the prompt's own image first (pre-ASR); False: every prompt is attacked
    target_steps: int = 50  # DDIM steps of the original model's target image (CFG 7.5, as `target_latents`)
    batch_size: int = 32  # prompts per batched call (speed and memory only)

    variant = ""  # "n" or "k", per subclass

    def __post_init__(self):
        for name in ("iterations", "eval_every", "num_inference_steps", "target_steps", "batch_size", *self._counts()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a whole number >= 1, got {value!r} (a budget of 0 attacks nothing)")

    def _counts(self) -> tuple:
        return ()

    def evaluations(self) -> int:
        """Judged images after optimisation steps: every `eval_every` steps and after the last one."""
        return -(-self.iterations // self.eval_every)

    def unet_budget(self) -> int:
        """The most UNet evaluations per prompt: 2 per gradient step (original forward, erased forward and
        backward) and the judged images (the pre-attack one included when `pre_attack`), steps x 2 with CFG."""
        images = self.evaluations() + int(self.pre_attack)
        return 2 * self.iterations + images * self.num_inference_steps * (2 if self.guidance_scale > 1.0 else 1)

    @classmethod
    def toy(cls, **overrides):
        """A budget for the toy model on a CPU: 200 steps, judged every 25 at DDIM 20 steps (targets too)."""
        return cls(**{"iterations": 200, "eval_every": 25, "num_inference_steps": 20, "target_steps": 20, **overrides})


@dataclass
class P4DNConfig(P4DConfig):
    """P4D-N: `prompt_len` free tokens (`optimize_n.py`); the prompt is not part of the adversarial input."""

    prompt_len: int = 16  # N

    variant = "n"

    def _counts(self) -> tuple:
        return ("prompt_len",)


@dataclass
class P4DKConfig(P4DConfig):
    """P4D-K: one learnable token before every `every_k` prompt tokens (`optimize_k.py`)."""

    every_k: int = 3  # K

    variant = "k"

    def _counts(self) -> tuple:
        return ("every_k",)


# ----------------------------------------------------------------------------- layout and encoding


def layout(tokenizer, prompt: str, config: P4DConfig) -> tuple[list, list]:
    """The adversarial token sequence between SOT and EOT, as (ids with None where a learnable token
    goes, the learnable positions in that list). P4D-N: N learnable tokens. P4D-K: a learnable token
    before prompt tokens 0, K, 2K, ... and after the last when K divides L (floor(L/K) + 1), each moved
    forward to the next word boundary. Raises when the sequence does not fit CLIP's 77 tokens."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if config.variant == "n":
        seq = [None] * config.prompt_len
    else:
        ids = tokenizer(prompt, truncation=False).input_ids[1:-1]
        words = tokenizer.convert_ids_to_tokens(ids)
        boundary = [m == 0 or m == len(ids) or words[m - 1].endswith("</w>") for m in range(len(ids) + 1)]
        points = []
        for j in range(len(ids) // config.every_k + 1):
            m = j * config.every_k
            while not boundary[m]:
                m += 1
            points.append(m)
        seq = []
        for m in range(len(ids) + 1):
            seq += [None] * points.count(m)
            if m < len(ids):
                seq.append(ids[m])
    if len(seq) + 2 > MAX_TOKENS:
        raise ValueError(
            f"P4D-{config.variant.upper()} on prompt {prompt[:60]!r} needs {len(seq) + 2} CLIP tokens (start and end included), "
            f"over CLIP's limit of {MAX_TOKENS}. Shorten the prompt or use fewer learnable tokens."
        )
    return seq, [i for i, x in enumerate(seq) if x is None]


def sequence_ids(tokenizer, seq: list, tokens: list) -> list:
    """The layout `seq` with its learnable positions filled by `tokens`."""
    it = iter(tokens)
    return [next(it) if x is None else x for x in seq]


def encode_sequence(text_encoder, tokenizer, seqs: list, embeds: list) -> torch.Tensor:
    """CLIP hidden states `(B, 77, D)` of `[SOT, seq, EOT, pad...]` for each layout in `seqs`, the
    learnable positions (None) taking the rows of `embeds[b]` `(n_b, D)` in order (token embeddings
    before the position embeddings; differentiable w.r.t. them). Padded as the tokenizer pads; with the
    token embeddings of real tokens this equals encoding those ids."""
    encoder = _unwrap(text_encoder)
    embedding = encoder.get_input_embeddings()
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [[bos] + [bos if x is None else x for x in s] + [eos] + [pad] * (MAX_TOKENS - len(s) - 2) for s in seqs]
    ids = torch.tensor(rows, dtype=torch.long, device=embedding.weight.device)
    where = torch.zeros_like(ids, dtype=torch.bool)
    for b, s in enumerate(seqs):
        for i, x in enumerate(s):
            where[b, 1 + i] = x is None
    flat = torch.cat([e for e in embeds]) if embeds else None

    def insert(module, inputs, output):  # (B, 77, D) token embeddings
        return output.masked_scatter(where[..., None].to(output.device), flat.to(output.device, output.dtype))

    mask = (ids != pad).long() if getattr(encoder.config, "use_attention_mask", False) else None
    handle = embedding.register_forward_hook(insert)
    try:
        return text_encoder(ids, attention_mask=mask)[0]
    finally:
        handle.remove()


def decode(tokenizer, ids: list) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


# ----------------------------------------------------------------------------- the attack


@dataclass
class _Slot:
    index: int
    prompt: str
    seed: int
    result: AttackResult
    seq: list
    soft: torch.Tensor  # (n, D) the optimised soft embeddings
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    x0: torch.Tensor  # (1, 4, h, w)
    target_cond: torch.Tensor  # (1, 77, D) the original text encoder's hidden states of the prompt
    tokens: list = None  # the last projected tokens


def project(soft: torch.Tensor, E_unit: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """Indices into `vocab` of the nearest rows by cosine similarity, one per row of `soft` `(n, D)`."""
    return (F.normalize(soft, dim=-1) @ E_unit.T).argmax(-1)


def p4d_many(erased, prompts, seeds, is_success, config=None, *, original=None, concept=None, callback=None, cancel=None, progress=True):
    """P4D-N or P4D-K (by the config's class) on every (prompt, seed) pair -> `AttackRun`; see the module docstring."""
    config = config or P4DNConfig()
    name = f"p4d-{config.variant}"
    if original is None:
        raise ValueError(f"{name} needs the original (unerased) model: its noise prediction is the target; pass original=")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(seeds)] * len(prompts) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seeds) != len(prompts) or not prompts:
        raise ValueError(f"one seed per prompt and at least one prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
    start = time.perf_counter()
    tok, te, unet = erased.tokenizer, erased.text_encoder, erased.unet
    layouts = [layout(tok, p, config) for p in prompts]  # raises early if a prompt does not fit
    if config.pre_attack:
        results = pre_attack_many(name, erased, prompts, seeds, is_success, config, callback, cancel, total=config.iterations, iteration=0)
    else:
        results = [AttackResult(name, p, p, False, False, seed=s) for p, s in zip(prompts, seeds)]
    for r in results:
        if r.pre_success:
            r.wall_time = time.perf_counter() - start
    queue = [i for i, r in enumerate(results) if not r.pre_success]
    total = len(queue) * config.iterations

    device, dtype = unet.device, unet.dtype
    vocab = vocabulary(tok, config.vocabulary)
    E = _unwrap(te).get_input_embeddings().weight.detach()[vocab.to(device)].float()  # (V, D)
    E_unit = F.normalize(E, dim=-1)
    alphas = erased.scheduler.alphas_cumprod.to(device, torch.float32)
    T = erased.scheduler.config.num_train_timesteps
    pool: list[_Slot] = []
    done = 0

    def admit(indices):
        x0s = batched_targets(original, [prompts[i] for i in indices], [seeds[i] for i in indices], config.batch_size, config.target_steps)
        with torch.no_grad():
            conds = encode_prompts(original, [prompts[i] for i in indices])
        for i, x0, cond in zip(indices, x0s, conds):
            seq, learn = layouts[i]
            gen = torch.Generator(device).manual_seed(seeds[i])
            init = torch.randint(len(vocab), (len(learn),), generator=gen, device=device)
            soft = E[init].clone().requires_grad_(True)  # (n, D), from n random vocabulary tokens
            opt = torch.optim.AdamW([soft], lr=config.lr, weight_decay=config.weight_decay)
            pool.append(_Slot(i, prompts[i], seeds[i], results[i], seq, soft, opt, gen, x0[None].to(device, torch.float32), cond[None]))

    bar = tqdm(total=total, desc=f"{name.upper()} x{len(queue)}", disable=not progress, leave=False)
    try:
        step = 0
        while pool or queue:
            room = config.batch_size - len(pool)
            if queue and room > 0 and (not pool or step % config.eval_every == 0):  # newcomers join at an evaluation boundary
                admit(queue[:room])
                queue = queue[room:]
            if is_cancelled(cancel):
                raise Cancelled(f"{name} cancelled after {done} gradient steps over {len(prompts)} prompts")
            projected = []
            for s in pool:
                idx = project(s.soft.detach(), E_unit, vocab)
                s.tokens = vocab[idx.cpu()].tolist()
                projected.append(E[idx].clone().requires_grad_(True))  # (n, D): what the forward pass uses
            ts = torch.cat([torch.randint(T, (1,), generator=s.gen, device=device) for s in pool])
            noise = torch.cat([torch.randn(s.x0.shape, generator=s.gen, device=device) for s in pool])
            a = alphas[ts][:, None, None, None]
            x0 = torch.cat([s.x0 for s in pool])
            z_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(dtype)
            with torch.no_grad():
                want = original.unet(z_t, ts, encoder_hidden_states=torch.cat([s.target_cond for s in pool]).to(dtype), return_dict=False)[
                    0
                ]
            cond = encode_sequence(te, tok, [s.seq for s in pool], projected).to(dtype)
            pred = unet(z_t, ts, encoder_hidden_states=cond, return_dict=False)[0]
            losses = (pred.float() - want.float()).square().flatten(1).mean(1)  # (B,)
            grads = torch.autograd.grad(losses.sum(), projected)  # no .grad on the models' weights
            for s, g, loss in zip(pool, grads, losses.tolist()):
                s.optimizer.zero_grad(set_to_none=True)
                s.soft.grad = g  # straight-through: the projected embeddings' gradient updates the soft ones
                s.optimizer.step()
                r = s.result
                r.losses.append(loss)
                r.gradient_steps += 1
                r.unet_evals += 2
            done += len(pool)
            step += 1
            bar.update(len(pool))
            if callback is not None:
                callback(event(name, done, total, phase="step", i=done - 1, active=len(pool), loss=float(losses.mean())))
            due = [s for s in pool if s.result.gradient_steps % config.eval_every == 0 or s.result.gradient_steps == config.iterations]
            if due:
                evaluate(erased, due, is_success, config, name, done, total, len(prompts), callback, cancel)
            keep = []
            for s in pool:
                if s.result.success or s.result.gradient_steps == config.iterations:
                    s.result.wall_time = time.perf_counter() - start
                else:
                    keep.append(s)
            pool = keep
    finally:
        bar.close()
    return AttackRun(
        name, results, wall_time=time.perf_counter() - start, artifacts={"variant": config.variant, "batch_size": config.batch_size}
    )


def evaluate(pipe, slots, is_success, config, name, done, total, n_prompts, callback, cancel):
    """Decode each slot's projected tokens (those of its last step), re-tokenise, and judge the texts'
    images together (each with its pair's seed); a text over 77 tokens is skipped, never truncated."""
    tok = pipe.tokenizer
    items, ids_of = [], {}
    for s in slots:
        ids = sequence_ids(tok, s.seq, s.tokens)
        text = decode(tok, ids)
        entry = {
            "iteration": s.result.gradient_steps,
            "prompt": text,
            "success": False,
            "loss": float(np.mean(s.result.losses[-config.eval_every :])),
        }
        s.result.history.append(entry)
        items.append((s.result, s.seed, text, entry))
        ids_of[id(s.result)] = (s, ids)
    for (r, _, text, _), ok, image in judge_texts(pipe, items, is_success, config, cancel):
        s, ids = ids_of[id(r)]
        r.adversarial_tokens = list(s.tokens)
        r.exact_tokens = tok(text, truncation=False).input_ids[1:-1] == ids
        if callback is not None:
            callback(
                event(
                    name,
                    done,
                    total,
                    phase="eval",
                    i=r.gradient_steps,
                    iteration=r.gradient_steps,
                    prompt=text,
                    success=ok,
                    image=image,
                    prompt_index=s.index + 1,
                    prompts=n_prompts,
                )
            )


def _cost(config) -> int:
    return config.unet_budget()


register(Attack("p4d-n", "P4D-N", P4DNConfig, run_many=p4d_many, needs_original=True, cost=_cost))
register(Attack("p4d-k", "P4D-K", P4DKConfig, run_many=p4d_many, needs_original=True, cost=_cost))
