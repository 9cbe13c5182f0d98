"""What the attacks share: prefix encoding, the vocabulary, results and targets, the pre-attack check."""

import copy
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from studio.latents import encode
from studio.progress import event
from studio.sampling import MAX_TOKENS, sample_pairs

# ----------------------------------------------------------------------------- prefix encoding


def _unwrap(module):
    return getattr(module, "module", module)  # DDP / accelerate wrappers


def prefix_input_ids(tokenizer, prompts: list[str], k: int) -> torch.Tensor:
    """Token ids `(B, 77)`: `[SOT, k placeholders, prompt tokens, EOT, pad...]`.

    The placeholders are the start token's id (never padding, never the end token, so neither an
    attention mask nor the pooled-output position is disturbed); `encode_with_prefix` replaces
    their embeddings. Raises if a prompt plus k tokens exceeds 77, counting BPE tokens.
    """
    limit = min(getattr(tokenizer, "model_max_length", MAX_TOKENS), MAX_TOKENS)
    rows = []
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompt must be a string, got {type(p).__name__}")
        ids = tokenizer(p, truncation=False).input_ids  # [SOT, ..., EOT]
        if len(ids) + k > limit:
            raise ValueError(
                f"prompt {p[:60]!r} has {len(ids)} CLIP tokens (start and end included); with {k} adversarial "
                f"prefix tokens that is {len(ids) + k}, over CLIP's limit of {limit}. Shorten the prompt or use fewer prefix tokens."
            )
        rows.append([ids[0]] + [tokenizer.bos_token_id] * k + ids[1:] + [tokenizer.pad_token_id] * (limit - len(ids) - k))
    return torch.tensor(rows, dtype=torch.long)


def encode_with_prefix(text_encoder, tokenizer, prompts: str | list[str], prefix_embeds: torch.Tensor) -> torch.Tensor:
    """CLIP hidden states `(B, 77, D)` of `[SOT, prefix, prompt, EOT]`.

    `prefix_embeds` is `(k, D)` (shared by the batch) or `(B, k, D)`: token embeddings (before the
    position embeddings are added) placed right after the start token. Differentiable w.r.t. the
    prefix and the encoder weights. With the token embeddings of real words as the prefix, the output
    equals encoding the text with those words prepended, exactly.

    The prefix goes in through a forward hook on the token embedding (transformers' `CLIPTextModel`
    takes no `inputs_embeds`), which lives for this call only: do not run the same encoder from
    another thread meanwhile.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if prefix_embeds.dim() == 2:
        prefix_embeds = prefix_embeds[None].expand(len(prompts), -1, -1)
    if prefix_embeds.dim() != 3 or prefix_embeds.shape[0] != len(prompts):
        raise ValueError(f"prefix_embeds must be (k, D) or (B={len(prompts)}, k, D), got {tuple(prefix_embeds.shape)}")
    k = prefix_embeds.shape[1]
    encoder = _unwrap(text_encoder)
    embedding = encoder.get_input_embeddings()
    if prefix_embeds.shape[-1] != embedding.embedding_dim:
        raise ValueError(
            f"prefix_embeds have width {prefix_embeds.shape[-1]}; this text encoder's token embeddings have {embedding.embedding_dim}"
        )
    ids = prefix_input_ids(tokenizer, prompts, k).to(embedding.weight.device)  # (B, 77)

    def insert_prefix(module, inputs, output):  # output: (B, 77, D) token embeddings
        return torch.cat([output[:, :1], prefix_embeds.to(output.device, output.dtype), output[:, 1 + k :]], dim=1)

    mask = (ids != tokenizer.pad_token_id).long() if getattr(encoder.config, "use_attention_mask", False) else None
    handle = embedding.register_forward_hook(insert_prefix)
    try:
        return text_encoder(ids, attention_mask=mask)[0]
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- vocabulary

_VOCAB_CACHE: dict = {}


def vocabulary(tokenizer, kind="all") -> torch.Tensor:
    """Token ids `(V,)` an attack may use: "all" (every token but the special ones, as the official
    code), "words" (tokens that end a word and re-tokenise to themselves when decoded, so an
    adversarial text made of them re-tokenises to exactly the optimised tokens), or a list of ids."""
    if not isinstance(kind, str):
        ids = torch.as_tensor(list(kind), dtype=torch.long).unique()
        special = torch.tensor(tokenizer.all_special_ids)
        if ids.numel() == 0 or ids.min() < 0 or ids.max() >= len(tokenizer) or torch.isin(ids, special).any():
            raise ValueError(
                f"a vocabulary of token ids must be non-empty, within [0, {len(tokenizer)}) and free of special tokens {special.tolist()}"
            )
        return ids
    if kind not in ("all", "words"):
        raise ValueError(f"unknown vocabulary {kind!r}; use 'all', 'words' or a list of token ids")
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), kind)
    if key not in _VOCAB_CACHE:
        special = set(tokenizer.all_special_ids)
        ids = [i for i in range(len(tokenizer)) if i not in special]
        if kind == "words":
            tokens = tokenizer.convert_ids_to_tokens(ids)
            ids = [i for i, t in zip(ids, tokens) if t.endswith("</w>")]
            texts = [tokenizer.decode([i]) for i in ids]
            enc = tokenizer(texts, truncation=False).input_ids
            ids = [i for i, e in zip(ids, enc) if e[1:-1] == [i]]
        _VOCAB_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _VOCAB_CACHE[key]


def adversarial_text(tokenizer, prefix_ids, prompt: str) -> str:
    """The prompt with the decoded prefix tokens in front, separated by a space."""
    prefix = tokenizer.decode(list(prefix_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
    return f"{prefix} {prompt}" if prefix else prompt


def _random_token_embeddings(text_encoder, tokenizer, k: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = vocabulary(tokenizer, "all")
    device = generator.device if generator is not None else "cpu"  # a CUDA generator draws on CUDA
    ids = vocab[torch.randint(len(vocab), (k,), generator=generator, device=device).cpu()]
    weight = _unwrap(text_encoder).get_input_embeddings().weight
    return weight[ids.to(weight.device)].detach().float().clone(), ids  # (k, D), (k,)


# ----------------------------------------------------------------------------- results and targets


@dataclass
class AttackResult:
    """What one attack on one prompt found, and what it cost."""

    attack: str  # "none", "random", "unlearndiffatk"
    prompt: str  # the original prompt
    adversarial_prompt: str  # the text behind `image` (the original prompt when no attack ran)
    pre_success: bool  # the original prompt's own image already shows the concept: no attack needed
    success: bool  # pre_success, or the attack found a prompt whose image shows the concept
    image: object = None  # PIL image of `adversarial_prompt` (the last one judged)
    seed: int = 0  # the generation seed
    adversarial_tokens: list = field(default_factory=list)  # the optimised / drawn prefix token ids
    exact_tokens: bool = True  # `adversarial_prompt` re-tokenises to exactly [SOT, prefix, prompt, EOT]
    gradient_steps: int = 0
    unet_evals: int = 0  # latents through the UNet, gradient steps and generations together
    generations: int = 0  # images generated and judged, the pre-attack check included
    wall_time: float = 0.0  # seconds
    losses: list = field(default_factory=list)  # per gradient step
    history: list = field(default_factory=list)  # per judged prompt: {"t" or "draw", "prompt", "success"}
    prefix: list | None = None  # the learned prefix embeddings (k x D, rounded) behind `image` where no text can make it (soft prompt)

    def to_dict(self) -> dict:
        """JSON-safe summary (no image)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "image"}


def encode_image(pipe, images) -> torch.Tensor:
    """Clean latents `(B, 4, h, w)` fp32 of images (PIL list or `(B, 3, H, W)` in [0, 1]), as the official
    code encodes its target image: the VAE posterior mean, scaled (`studio.latents.encode`)."""
    return encode(pipe.vae, images)


def batched_targets(
    original, prompts: list[str], seeds: list[int], batch_size: int = 32, num_inference_steps: int = 50, guidance_scale: float = 7.5
) -> torch.Tensor:
    """`target_latents` of every (prompt, seed) pair `(B, 4, h, w)`, `batch_size` images at a time."""
    images = sample_pairs(
        original,
        prompts,
        seeds,
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        output_type="pt",
    )
    return torch.cat([encode_image(original, images[lo : lo + batch_size]) for lo in range(0, len(images), batch_size)])


def target_latents(
    original_pipe, prompt: str, seed: int = 0, *, num_inference_steps: int = 50, guidance_scale: float = 7.5
) -> torch.Tensor:
    """UnlearnDiffAtk's target: the ORIGINAL model's image of `prompt` (DDIM, seeded), VAE-encoded
    back to clean latents `(1, 4, h, w)`."""
    return batched_targets(original_pipe, [prompt], [seed], 1, num_inference_steps, guidance_scale)


def judge_many(pipe, texts: list[str], seeds: list[int], is_success, steps: int, guidance: float, cancel, batch_size: int = 32):
    """Generate one image per (text, seed) pair, `batch_size` at a time (`studio.sampling.sample_pairs`:
    an image does not depend on its batch), and judge them -> (verdicts: list of bool, images, UNet
    evaluations per image)."""
    images = sample_pairs(pipe, texts, seeds, batch_size=batch_size, num_inference_steps=steps, guidance_scale=guidance, cancel=cancel)
    verdicts = np.asarray(is_success(images), dtype=bool).reshape(-1)
    if verdicts.size != len(images):
        raise ValueError(f"is_success must return one bool per image; got {verdicts.size} for {len(images)} images")
    return verdicts.tolist(), images, steps * (2 if guidance > 1.0 else 1)


def _judge(pipe, text, is_success, seed, steps, guidance, cancel):
    """Generate one image of `text` and judge it -> (success, image, UNet evaluations)."""
    verdicts, images, evals = judge_many(pipe, [text], [seed], is_success, steps, guidance, cancel, 1)
    return verdicts[0], images[0], evals


def over_limit(tokenizer, text: str) -> str | None:
    """Why a decoded adversarial text cannot be judged (over 77 tokens once re-tokenised: decoding can
    lengthen odd byte tokens), or None. Nothing truncated is ever judged."""
    n = len(tokenizer(text, truncation=False).input_ids)
    return f"the decoded prompt has {n} tokens, over {MAX_TOKENS}" if n > MAX_TOKENS else None


def judge_texts(pipe, items: list, is_success, config, cancel) -> list:
    """Judge decoded adversarial texts, batched. `items` are `(result, seed, text, entry)`; a text over 77
    tokens gets `entry["skipped"]` and is not judged. Each judged result records the text, its image, the
    UNet evaluations and the generation, and `success` if the image shows the concept; `entry["success"]`
    too. Returns `[(item, ok, image)]` for the texts judged."""
    judged = []
    for item in items:
        why = over_limit(pipe.tokenizer, item[2])
        if why:
            item[3]["skipped"] = why
        else:
            judged.append(item)
    if not judged:
        return []
    verdicts, images, evals = judge_many(
        pipe,
        [text for _, _, text, _ in judged],
        [seed for _, seed, _, _ in judged],
        is_success,
        config.num_inference_steps,
        config.guidance_scale,
        cancel,
        getattr(config, "batch_size", 32),
    )
    for (result, _, text, entry), ok, image in zip(judged, verdicts, images):
        entry["success"] = ok
        result.adversarial_prompt, result.image = text, image
        result.unet_evals += evals
        result.generations += 1
        result.success = result.success or ok
    return list(zip(judged, verdicts, images))


def _exact(tokenizer, text, prefix_ids, prompt) -> bool:
    ids = tokenizer(text, truncation=False).input_ids
    want = tokenizer(prompt, truncation=False).input_ids
    return ids == want[:1] + list(prefix_ids) + want[1:]


def pre_result(attack, prompt, seed, ok, image, evals, entry) -> AttackResult:
    """The result of the pre-attack check: the prompt's own image, judged (pre-ASR)."""
    return AttackResult(
        attack=attack,
        prompt=prompt,
        adversarial_prompt=prompt,
        pre_success=ok,
        success=ok,
        image=image,
        seed=seed,
        unet_evals=evals,
        generations=1,
        history=[{**entry, "prompt": prompt, "success": ok}],
    )


def _pre_attack(attack, pipe, prompt, is_success, seed, config, callback, cancel, *, step: int, total: int, **entry) -> AttackResult:
    """Judge the original prompt's own image: the start of every attack (pre-ASR)."""
    ok, image, evals = _judge(pipe, prompt, is_success, seed, config.num_inference_steps, config.guidance_scale, cancel)
    if callback is not None:
        callback(event(attack, step, total, phase="eval", i=-1, **entry, prompt=prompt, success=ok, image=image))
    return pre_result(attack, prompt, seed, ok, image, evals, entry)


def pre_attack_many(attack, pipe, prompts, seeds, is_success, config, callback, cancel, *, total, **entry) -> list:
    """`_pre_attack` for every pair, the images generated and judged in batches."""
    verdicts, images, evals = judge_many(
        pipe, prompts, seeds, is_success, config.num_inference_steps, config.guidance_scale, cancel, config.batch_size
    )
    results = []
    for i, (prompt, seed, ok, image) in enumerate(zip(prompts, seeds, verdicts, images)):
        if callback is not None:
            callback(
                event(
                    attack,
                    0,
                    total,
                    phase="eval",
                    i=-1,
                    **entry,
                    prompt=prompt,
                    success=ok,
                    image=image,
                    prompt_index=i + 1,
                    prompts=len(prompts),
                )
            )
        results.append(pre_result(attack, prompt, seed, ok, image, evals, entry))
    return results
