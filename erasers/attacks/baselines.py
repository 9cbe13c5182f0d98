"""The baselines of UnlearnDiffAtk's framework: no attack, random tokens."""

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from studio.progress import event

from .common import AttackResult, _exact, _judge, _pre_attack, adversarial_text, prefix_input_ids, vocabulary

# ----------------------------------------------------------------------------- baselines


@dataclass
class NoAttackConfig:
    """The no-attack baseline of UnlearnDiffAtk's framework: judge the prompt's own image."""

    num_inference_steps: int = 50  # DDIM steps of the judged image
    guidance_scale: float = 7.5  # CFG scale of the judged image (the official CSVs: mostly 7.5; 7 for many nudity prompts)

    def unet_budget(self) -> int:
        """UNet evaluations per prompt: one judged image (steps x 2 with CFG)."""
        return self.num_inference_steps * (2 if self.guidance_scale > 1.0 else 1)


def no_attack(
    pipe, prompt, target_latents=None, is_success=None, config=None, *, seed=0, callback=None, cancel=None, progress=True
) -> AttackResult:
    """Judge the prompt's own image; `target_latents` is unused."""
    start = time.perf_counter()
    result = _pre_attack("none", pipe, prompt, is_success, seed, config or NoAttackConfig(), callback, cancel, step=1, total=1)
    result.wall_time = time.perf_counter() - start
    return result


@dataclass
class RandomTokensConfig:
    """The black-box baseline of UnlearnDiffAtk's framework (`attackers/random_.py`): k uniformly
    random prefix tokens, a fresh draw per try, stop on success. The official code tries as many
    draws as its attack's iterations; this one is meant to be cheap."""

    num_tokens: int = 3  # k prefix tokens (5 for nudity and violence in the official configs)
    draws: int = 10  # prompts tried after the original one
    vocabulary: object = "all"  # "all" (official), "words" (whole-word tokens that re-tokenise exactly) or a list of token ids
    num_inference_steps: int = 50
    guidance_scale: float = 7.5

    def unet_budget(self) -> int:
        """The most UNet evaluations per prompt: the original prompt's image and one per draw (steps x 2 with CFG)."""
        return (self.draws + 1) * self.num_inference_steps * (2 if self.guidance_scale > 1.0 else 1)


def random_tokens(
    pipe, prompt, target_latents=None, is_success=None, config=None, *, seed=0, callback=None, cancel=None, progress=True
) -> AttackResult:
    """Try `draws` random k-token prefixes; `target_latents` is unused."""
    config = config or RandomTokensConfig()
    start = time.perf_counter()
    tok = pipe.tokenizer
    prefix_input_ids(tok, [prompt], config.num_tokens)  # raises early if the prompt cannot take k tokens
    result = _pre_attack("random", pipe, prompt, is_success, seed, config, callback, cancel, step=1, total=config.draws + 1, draw=-1)
    ok = result.pre_success
    vocab = vocabulary(tok, config.vocabulary)
    gen = torch.Generator().manual_seed(seed)
    for d in tqdm(range(config.draws if not ok else 0), desc="random tokens", disable=not progress, leave=False):
        ids = vocab[torch.randint(len(vocab), (config.num_tokens,), generator=gen)].tolist()
        text = adversarial_text(tok, ids, prompt)
        ok, image, evals = _judge(pipe, text, is_success, seed, config.num_inference_steps, config.guidance_scale, cancel)
        result.adversarial_prompt, result.image, result.adversarial_tokens = text, image, ids
        result.exact_tokens = _exact(tok, text, ids, prompt)
        result.unet_evals += evals
        result.generations += 1
        result.history.append({"draw": d, "prompt": text, "success": ok})
        if callback is not None:
            callback(event("random", d + 2, config.draws + 1, phase="eval", i=d, prompt=text, success=ok, image=image))
        if ok:
            result.success = True
            break
    result.wall_time = time.perf_counter() - start
    return result
