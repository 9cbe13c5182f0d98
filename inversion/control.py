"""Prompt-to-prompt attention control (Hertz, Mokady, Tenenbaum, Aberman, Pritch, Cohen-Or:
"Prompt-to-Prompt Image Editing with Cross Attention Control", ICLR 2023), for one edit call.

The batch of every UNet call is [uncond rows; cond rows] (just the cond rows without CFG), each
half ordered [source, target 1, ...]. As in the official code only the conditional half is edited;
the unconditional (null-text) branch is never touched:

* cross-attention, steps in the `cross_replace_steps` window (per word):
  target maps = edit(source maps) * alpha + own maps * (1 - alpha), where edit is
  replace (`einsum('hpw,bwn->bhpn', source, mapper)`), refine (aligned tokens copy the source's
  map, inserted tokens keep their own) and/or reweight (times the equalizer, no renormalisation);
* self-attention, steps in the `self_replace_steps` window, on layers at most `self_max_side`
  cells high: the target attends with the source's maps (done with SDPA, see attention.py);
* local blend (after each step, from `blend_start`): the mask of the blend words' cross-attention
  (summed over steps, maps at `blend_side`, max-pool, nearest upsampling to the latent, normalised
  by its max, threshold 0.3, union with the source's mask) keeps the target equal to the source
  outside it: x_tgt = x_src + mask * (x_tgt - x_src).

Resolutions relative to the latent: SD's LocalBlend reads the 16x16 maps of a 64x64 latent and
replaces self-attention on layers of at most 32x32 queries. Here the blend maps are those at
latent/4 cells and self-attention is replaced up to latent/2 cells, with a floor of 8 cells (both
capped at the latent side): SD v1 gets 16 and 32 as in the official code, SD 2 at 768 px gets 24
and 48, and the toy model (8x8 latents) gets its 8x8 maps for both, the finest it has (its 4x4
maps cover 8 pixels a cell, too coarse for a mask). The blend maps come from the cross layers
whose side is nearest to that target. The max-pool likewise spans 1/16 of the image each way (3x3
on SD's 16x16 maps, as the official code) and vanishes below 16 cells.

On the toy model the words' cross-attention maps do not find the object: its text encoder and UNet
were trained together from scratch, and their 8x8 maps follow the image's brightness (the object
is the maximum of a word's map on a dark background and the minimum on a light one), so the mask
is most of the image; benchmarks/editing_table.py measures it. The mechanism is tested with
attention that does point at a region (tests/test_p2p.py).

Deliberate differences from the official code (google/prompt-to-prompt `ptp_utils.py` and the
NTI notebook): no globals: the controller belongs to one edit call, LocalBlend blends the latents
it is handed and the words it was built with (the notebook's `get_mask` reads a global `x_t` and
`make_controller` a global `blend_word`, fixed in its PR #88); the edit loop sets `step` instead
of the controller counting layer calls, and `calls` counts the hooked layers so that the loop can
raise when nothing got hooked (the official hook silently matches nothing on newer diffusers,
issue #57); self-attention replacement runs through SDPA (no 4096x4096 maps at 512 px); only the
blend words' maps at the blend resolution are kept (summed), not every map of every layer.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import align
from .attention import probabilities, sdpa


def default_blend_side(latent_side: int) -> int:
    return min(latent_side, max(latent_side // 4, 8))


def default_self_max_side(latent_side: int) -> int:
    return min(latent_side, max(latent_side // 2, 8))


@dataclass
class EditPlan:
    """What the controller does, built from the prompts by `make_controller`."""

    mode: str  # "replace" or "refine"
    mappers: torch.Tensor  # replace: (T, 77, 77); refine: (T, 77) long
    refine_alphas: torch.Tensor | None  # refine: (T, 77)
    cross_alphas: torch.Tensor  # (N + 1, T, 77): per step, per target, per token
    self_steps: tuple  # [start, end) steps of self-attention replacement
    equalizer: torch.Tensor | None  # (T, 77) or None


class LocalBlend:
    """Mask from the cross-attention of chosen words; keeps the target equal to the source outside it."""

    def __init__(self, token_weights: torch.Tensor, latent_hw: tuple, start_step: int, threshold: float = 0.3, side: int | None = None):
        self.token_weights = token_weights  # (B, 77): 1 on the blend words' tokens of each prompt
        self.latent_hw = latent_hw
        self.start_step = start_step
        self.threshold = threshold
        self.target_side = side or default_blend_side(latent_hw[0])
        self.side = None  # chosen after the first step among the sides actually seen
        self.sums = {}  # side -> (B, lh, lw) summed maps
        self.last_mask = None  # (B, 1, h, w) bool, the mask of the last blended step

    def wants(self, side: int) -> bool:
        return self.side is None or side == self.side

    def accumulate(self, cond_probs: torch.Tensor, hw: tuple) -> None:
        """cond_probs (B, heads, N, 77), before any replacement; summed over the words' tokens, mean over heads."""
        w = self.token_weights.to(cond_probs.device, cond_probs.dtype)
        maps = (cond_probs * w[:, None, None, :]).sum(-1).mean(1)  # (B, N)
        maps = maps.reshape(maps.shape[0], *hw)
        side = hw[0]
        self.sums[side] = self.sums[side] + maps if side in self.sums else maps

    def end_of_step(self) -> None:
        if self.side is None and self.sums:
            self.side = min(self.sums, key=lambda s: (abs(s - self.target_side), -s))
            self.sums = {self.side: self.sums[self.side]}

    def mask(self) -> torch.Tensor:
        maps = self.sums[self.side][:, None]  # (B, 1, lh, lw)
        k = self.side // 16  # the official 3x3 max-pool on 16x16 maps, i.e. 1/16 of the image; none on the toy's 8x8
        if k > 0:
            maps = F.max_pool2d(maps, 2 * k + 1, stride=1, padding=k)
        maps = F.interpolate(maps, size=self.latent_hw, mode="nearest")
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        mask = maps > self.threshold
        return mask[:1] | mask  # union with the source's region

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """x (B, 4, h, w) after the step; row 0 is the source."""
        if step < self.start_step or self.side is None:
            return x
        mask = self.mask()
        self.last_mask = mask
        m = mask.to(x.dtype)
        return x[:1] + m * (x - x[:1])


class Controller:
    """The state of one edit call: step, plan, blend, counters. Passed to the UNet with each call."""

    def __init__(
        self, plan: EditPlan, n_prompts: int, cfg: bool, latent_hw: tuple, blend: LocalBlend | None = None, self_max_side: int | None = None
    ):
        self.plan = plan
        self.n = n_prompts  # B: source + targets
        self.offset = n_prompts if cfg else 0  # first cond row
        self.latent_hw = latent_hw
        self.blend = blend
        self.self_max_side = self_max_side or default_self_max_side(latent_hw[0])
        self.step = 0
        self.calls = {"cross": 0, "self": 0}
        self.explicit_layers = set()  # (step, layer name) of every call that materialised probabilities
        self._hw = {}

    def layer_hw(self, n_query: int) -> tuple:
        if n_query not in self._hw:
            h, w = self.latent_hw
            s = 1
            while -(-h // s) * -(-w // s) > n_query and s < 4096:
                s *= 2
            hw = (-(-h // s), -(-w // s))
            if hw[0] * hw[1] != n_query:
                raise ValueError(
                    f"cannot place {n_query} attention queries on a {h}x{w} latent; prompt-to-prompt needs the UNet's usual layout"
                )
            self._hw[n_query] = hw
        return self._hw[n_query]

    def attention(self, name, is_cross, q, k, v, mask, scale):
        """q (B_all, heads, N, d), k/v (B_all, heads, S, d) -> (B_all, heads, N, d)."""
        hw = self.layer_hw(q.shape[2])
        a, b = self.offset, self.offset + self.n
        if not is_cross:
            self.calls["self"] += 1
            start, end = self.plan.self_steps
            if start <= self.step < end and hw[0] <= self.self_max_side:
                q, k = q.clone(), k.clone()
                q[a + 1 : b] = q[a]  # the targets attend with the source's queries and keys: its maps, their values
                k[a + 1 : b] = k[a]
            return sdpa(q, k, v, mask, scale)

        self.calls["cross"] += 1
        alphas = self.plan.cross_alphas[min(self.step, len(self.plan.cross_alphas) - 1)]  # (T, 77)
        edit = bool(alphas.any())
        store = self.blend is not None and self.blend.wants(hw[0])
        if not (edit or store):
            return sdpa(q, k, v, mask, scale)
        self.explicit_layers.add((self.step, name))
        probs = probabilities(q, k, mask, scale)  # (B_all, heads, N, 77) fp32
        cond = probs[a:b]
        if store:
            self.blend.accumulate(cond, hw)
        if edit:
            target = self.edit_cross(cond[0], cond[1:], alphas.to(probs.device))
            probs = torch.cat([probs[: a + 1], target, probs[b:]])
        return torch.matmul(probs.to(v.dtype), v)

    def edit_cross(self, base: torch.Tensor, own: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """base (heads, N, 77) source maps; own (T, heads, N, 77) target maps; alphas (T, 77)."""
        plan = self.plan
        mappers = plan.mappers.to(base.device)
        if plan.mode == "replace":
            new = torch.einsum("hpw,bwn->bhpn", base, mappers.to(base.dtype))
        else:
            new = base[:, :, mappers].permute(2, 0, 1, 3)  # (T, heads, N, 77)
            r = plan.refine_alphas.to(base.device, base.dtype)[:, None, None, :]
            new = new * r + own * (1 - r)
        if plan.equalizer is not None:
            new = new * plan.equalizer.to(base.device, base.dtype)[:, None, None, :]
        a = alphas.to(base.dtype)[:, None, None, :]
        return new * a + own * (1 - a)

    def begin_step(self, step: int) -> None:
        self.step = step
        self.calls = {"cross": 0, "self": 0}

    def end_step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self.blend is None:
            return x
        self.blend.end_of_step()
        return self.blend(x, step)


def make_controller(
    tokenizer,
    source: str,
    targets: list[str],
    num_steps: int,
    *,
    cfg: bool,
    latent_hw: tuple,
    mode: str = "auto",
    cross_replace_steps=0.8,
    self_replace_steps=0.5,
    reweight: dict | None = None,
    blend_words=None,
    blend_threshold: float = 0.3,
    blend_start: float = 0.2,
    blend_side: int | None = None,
    self_max_side: int | None = None,
) -> Controller:
    """The controller of one edit; every prompt-dependent check (word counts, words present) raises ValueError here."""
    if mode not in ("auto", "replace", "refine"):
        raise ValueError(f"unknown prompt-to-prompt mode {mode!r}; use 'replace', 'refine' or 'auto'")
    if mode == "auto":
        same = all(len(align.words(t)) == len(align.words(source)) for t in targets)
        mode = "replace" if same else "refine"
    if mode == "replace":
        mappers = torch.stack([align.replace_mapper(tokenizer, source, t) for t in targets])
        refine_alphas = None
    else:
        pairs = [align.refine_mapper(tokenizer, source, t) for t in targets]
        mappers = torch.stack([m for m, _ in pairs])
        refine_alphas = torch.stack([r for _, r in pairs])
    cross_alphas = torch.stack([align.time_alphas(tokenizer, t, num_steps, cross_replace_steps) for t in targets], dim=1)
    equalizer = None
    if reweight:
        words_, values = split_reweight(reweight)
        equalizer = torch.stack([align.equalizer(tokenizer, t, words_, values) for t in targets])
    plan = EditPlan(mode, mappers, refine_alphas, cross_alphas, align.self_window(num_steps, self_replace_steps), equalizer)

    blend = None
    if blend_words:
        src_words, tgt_words = split_blend_words(blend_words)
        weights = torch.zeros(1 + len(targets), align.MAX_LEN)
        for row, (prompt, ws) in enumerate([(source, src_words)] + [(t, tgt_words) for t in targets]):
            for w in ws:
                weights[row, align.token_indices(tokenizer, prompt, w)] = 1.0
        if not 0.0 <= blend_start <= 1.0:
            raise ValueError(f"blend_start must be a fraction of the steps in [0, 1], got {blend_start}")
        blend = LocalBlend(weights, latent_hw, int(blend_start * num_steps), blend_threshold, blend_side)
    return Controller(plan, 1 + len(targets), cfg, latent_hw, blend, self_max_side)


def split_blend_words(blend_words) -> tuple[list, list]:
    """ "cat" -> (["cat"], ["cat"]); ["red", "cat"] -> the same words in both prompts;
    ("cat", "tiger") or (["red", "cat"], ["tiger"]) -> (source words, target words)."""
    if isinstance(blend_words, str):
        return [blend_words], [blend_words]
    as_list = lambda w: [w] if isinstance(w, str) else list(w)  # noqa: E731
    if isinstance(blend_words, list) and all(isinstance(w, str) for w in blend_words):
        return list(blend_words), list(blend_words)
    if len(blend_words) != 2:
        raise ValueError(f"blend_words must be a word, a list of words, or (source words, target words); got {blend_words!r}")
    src, tgt = blend_words
    return as_list(src), as_list(tgt)


def split_reweight(reweight) -> tuple[list, list]:
    """{"word": 2.0, ...} or (words, values) -> (words, values); the equalizer checks that the lengths match."""
    if isinstance(reweight, dict):
        return list(reweight.keys()), list(reweight.values())
    try:
        words_, values = reweight
    except (TypeError, ValueError):
        raise ValueError(f"reweight must be a dict {{word: scale}} or a pair (words, values), got {reweight!r}") from None
    words_ = [words_] if isinstance(words_, str) else list(words_)
    values = [values] if isinstance(values, (int, float)) else list(values)
    return words_, values
