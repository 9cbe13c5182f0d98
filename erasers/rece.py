"""RECE: Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models (Gong et al., ECCV 2024).

RECE starts from a UCE-erased model and then, per epoch (reference note §2.2-2.5):

  1. derives in closed form the embedding that regenerates the concept on the *edited* model (§2.3):
     for every row c_j of the concept's full 77-row text-encoder output,
         c'_j = argmin_x Σ_l ||W'_l x - W_l c_j||² + reg(x)      (sum over K and V of every attn2)
     `close_regzero` (default): reg = regular_scale ||x||²  ->  c' = (λI + ΣW'ᵀW')⁻¹ (ΣW'ᵀW) c
     `close_standardreg`:      reg = λ ||x - t_j||², t = the guide's rows
     `close_surrogatereg`:     `reg_item` "1st": λ Σ_l ||W'_l x - W'_l c_j||²;  "2nd": λ ||x - c_j||²;  "both"
  2. erases it with the UCE closed form (§2.4) on the CURRENT weights: all 77 rows of c' mapped to the
     current K/V of the guide's 77 rows (erase_scale), all 77 rows of each preserved prompt kept
     (preserve_scale); "" is preserved once per concept prompt, as the official `train.py` does.
  3. repeats for `epochs`; only this epoch's c' enter the edit (earlier ones survive through the ridge).

c' lives in the text-encoder OUTPUT space; it is given to the UNet as `encoder_hidden_states`
(`studio.sampling.sample(prompt_embeds=...)`), so nothing needs `inputs_embeds`.

Defaults: the official `train.py` / README "Notes" (§2.6): 3 epochs (nudity; `RECEConfig.objects()`
and `.art()` give the README's 1 epoch and regular_scale 1e-3), regular_scale 0.1, lamb 0.1,
preserve_scale 0.1, erase_scale 1, guide "", `close_regzero`. Step 0 is UCE with the settings of the
UCE code RECE ships (`erase_methods/train_uce.py`, §2.2): the 2023 rows (last word to end), lamb 0.5,
erase 1, preserve max(0.1, 1/|retain|) with "" retained (1.0).

Model selection (§2.5). The official code scores every epoch on a validation prompt set with its
detector and keeps an epoch only when it improves. `selection="judge"` does this on the toy world with
the studio's judge: validation prompts are the LAST `selection_prompts` direct prompts of the concept
(the evaluation uses the first ones, so the sets are disjoint), and, following `train_object.py`, an
epoch is kept if its judged concept rate drops below the best so far while the other concepts of its
kind lose at most 0.1 accuracy against the original model; it stops early at rate 0, and keeps the UCE
model if no epoch qualifies. The default `selection="last"` keeps the last epoch (what `train_artists.py`
does, and the only choice without a judge for real models: the official NudeNet/Q16/ResNet-50
validation is not in the studio).

On the toy world (benchmarks/results/rece_sweep*.md) the premise holds strongly (the derived embedding
draws triangles every time on the UCE model whose prompt draws none; tests/test_rece.py), and each
epoch erases more, but the official edit weights (lamb 0.1, preserve 0.1) cost the other concepts much of
their accuracy in the toy's 64-d text space; see TOY_PRESETS.

Deliberate differences from the official code:
  * ΣW'ᵀW' and ΣW'ᵀW come from the original weights' Gram matrices: every UCE/RECE edit is W <- W·U for
    one (d, d) matrix U that depends only on text rows (targets are the current weights applied to
    rows), so W'_l = W_l T and ΣW'ᵀW' = Tᵀ(ΣWᵀW)T exactly; the Gram is computed once, in float64,
    instead of two full pipelines in memory and two 32-layer products per epoch. The edits themselves
    apply to the current stored weights, as the official code does (`gram_sums` computes the sums
    directly; the tests check that both agree).
  * No image is rendered per derivation, no full UNet is saved (only the K/V that changed, in the
    studio's erased-model folder), no hard-coded paths.
"""

import time
from dataclasses import dataclass

import torch

from studio.progress import event, relay
from studio.sampling import Cancelled, is_cancelled

from . import uce
from .base import ErasureResult, config_dict

DERIVATIONS = ("close_regzero", "close_standardreg", "close_surrogatereg")
REG_ITEMS = ("1st", "2nd", "both")
SELECTIONS = ("last", "judge")


@dataclass
class RECEConfig:
    """RECE (Gong et al., ECCV 2024); defaults of the official `train.py` and README (see the module docstring)."""

    epochs: int = 3  # derive -> erase rounds (README: nudity 3, unsafe 2, art 1, objects 1)
    derivation: str = "close_regzero"  # close_regzero | close_standardreg | close_surrogatereg
    regular_scale: float = 0.1  # λ of the derivation (README: nudity/unsafe 0.1, art and hard objects 1e-3)
    reg_item: str = "1st"  # close_surrogatereg only: 1st | 2nd | both
    lamb: float = 0.1  # ridge of the edit towards the current weights
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    guide: str = ""  # what c' is mapped to when the Concept has no anchors ("" = unconditional; "art" for artists)
    preserve: tuple = ()  # prompts kept (beside Concept.retain and "")
    with_to_k: bool = True
    # step 0: UCE as RECE's own erase_methods/train_uce.py
    uce_token_policy: str = "last_to_end"
    uce_lamb: float = 0.5
    uce_erase_scale: float = 1.0
    uce_preserve_scale: float | None = None  # None: max(0.1, 1/len(preserve))
    # model selection
    selection: str = "last"  # last | judge (toy world)
    selection_prompts: int = 8  # validation prompts (the last ones of the concept's direct prompts)
    selection_seeds: int = 2
    selection_steps: int = 20  # DDIM steps of the validation images

    def __post_init__(self):
        if self.derivation not in DERIVATIONS:
            raise ValueError(f"unknown RECE derivation {self.derivation!r}; use one of {', '.join(DERIVATIONS)}")
        if self.reg_item not in REG_ITEMS:
            raise ValueError(f"unknown RECE reg_item {self.reg_item!r}; use one of {', '.join(REG_ITEMS)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown RECE selection {self.selection!r}; use one of {', '.join(SELECTIONS)}")
        if self.epochs < 0 or self.regular_scale < 0 or self.lamb < 0:
            raise ValueError(f"RECE needs epochs, regular_scale and lamb >= 0 (got {self.epochs}, {self.regular_scale}, {self.lamb})")
        if self.derivation == "close_regzero" and self.regular_scale == 0:
            raise ValueError(
                "close_regzero with regular_scale 0 is unregularised and may be singular; use regular_scale > 0 (official 0.1 or 1e-3)"
            )
        self.preserve = (self.preserve,) if isinstance(self.preserve, str) else tuple(self.preserve)

    @classmethod
    def objects(cls, **kw) -> "RECEConfig":
        """README / train_object.py: 1 epoch, regular_scale 1e-3 ("difficult" objects; 0.1 for easy ones)."""
        return cls(**{"epochs": 1, "regular_scale": 1e-3, **kw})

    @classmethod
    def art(cls, **kw) -> "RECEConfig":
        """README / art.sh: 1 epoch, regular_scale 1e-3, guide "art"."""
        return cls(**{"epochs": 1, "regular_scale": 1e-3, "guide": "art", **kw})

    def uce_config(self) -> uce.UCEConfig:
        return uce.UCEConfig(
            mode="erase",
            erase_scale=self.uce_erase_scale,
            preserve_scale=self.uce_preserve_scale,
            lamb=self.uce_lamb,
            guide=self.guide,
            preserve=self.preserve,
            token_policy=self.uce_token_policy,
            with_to_k=self.with_to_k,
        )


# ---------------------------------------------------------------- step 1: the closed-form embedding (§2.3)


def derive(
    emb: torch.Tensor,
    S: torch.Tensor,
    P: torch.Tensor,
    *,
    derivation="close_regzero",
    regular_scale=0.1,
    reg_item="1st",
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows c' (N, d) that minimise Σ_l ||W'_l x - W_l c||² + reg for each row c of `emb` (N, d), given
    S = Σ W'ᵀW' and P = Σ W'ᵀW (d, d); `target` (N, d) is the guide's rows for close_standardreg."""
    c = emb.double()
    S, P = S.double(), P.double()
    lam = float(regular_scale)
    eye = torch.eye(S.shape[0], dtype=torch.float64)
    b = c @ P.T  # rows (P c_j)ᵀ
    if derivation == "close_regzero":
        A = S + lam * eye
    elif derivation == "close_standardreg":
        if target is None:
            raise ValueError("close_standardreg needs the guide's rows (target)")
        A, b = S + lam * eye, b + lam * target.double()
    elif derivation == "close_surrogatereg":
        first, second = reg_item in ("1st", "both"), reg_item in ("2nd", "both")
        A = S * (1 + lam * first) + lam * second * eye
        b = b + lam * first * (c @ S) + lam * second * c
    else:
        raise ValueError(f"unknown RECE derivation {derivation!r}; use one of {', '.join(DERIVATIONS)}")
    return torch.linalg.solve(A, b.T).T


def gram_sums(edited: dict, original: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(ΣW'ᵀW', ΣW'ᵀW) computed directly from {name: W'} and {name: W} (float64)."""
    S = P = 0
    for name, w in original.items():
        w, e = w.double(), edited[name].double()
        S = S + e.T @ e
        P = P + e.T @ w
    return S, P


class KVTracker:
    """The original K/V Gram matrices and the transform T of each set (keys, values): W'_l = W_l T."""

    def __init__(self, layers: dict):
        self.gram = {}
        for name, lin in layers.items():
            key = "k" if name.endswith(".to_k") else "v"
            w = lin.weight.detach().double().cpu()  # (d_out, d)
            self.gram[key] = self.gram.get(key, 0) + w.T @ w
        d = next(iter(layers.values())).weight.shape[1]
        self.T = {k: torch.eye(d, dtype=torch.float64) for k in self.gram}

    def update(self, U: torch.Tensor) -> None:
        for k in self.T:
            self.T[k] = self.T[k] @ U

    def sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ΣW'ᵀW', ΣW'ᵀW) over both sets."""
        S = P = 0
        for k, G in self.gram.items():
            T = self.T[k]
            S = S + T.T @ G @ T
            P = P + T.T @ G
        return S, P


# ---------------------------------------------------------------- model selection on the toy world (§2.5)


class _Validator:
    def __init__(self, pipe, prompts: list, config: RECEConfig):
        from studio.judges import get_judge
        from studio.toyworld.captions import prompts_for
        from studio.toyworld.grammar import concept as toy_concept
        from studio.toyworld.grammar import concepts_of, find_concept

        names = list(dict.fromkeys(find_concept(p) for p in prompts))
        if None in names:
            raise ValueError("RECE selection='judge' judges toy-world concepts, but a prompt names none; use selection='last'")
        self.judge, self.config, self.names = get_judge("toy"), config, names
        self.target = [(p, n) for n in names for p, _ in prompts_for(n, "direct")[-config.selection_prompts :]]
        kinds = {toy_concept(n).attribute for n in names}
        others = [c.name for k in kinds for c in concepts_of(k) if c.name not in names]
        self.retain = [(p, asked) for o in others for p, asked in prompts_for(o, "direct")[-2:]]
        self.unet_evals = 0
        self.original_acc = self.score(pipe)[1]

    def _images(self, pipe, prompts):
        from studio.sampling import sample

        out = []
        for s in range(self.config.selection_seeds):
            out += sample(pipe, prompts, seed=[1000 + s] * len(prompts), num_inference_steps=self.config.selection_steps).images
        self.unet_evals += 2 * self.config.selection_steps * len(prompts) * self.config.selection_seeds
        return out

    def score(self, pipe) -> tuple[float, float]:
        """(judged concept rate on the validation prompts, accuracy on the other concepts' prompts)."""
        import numpy as np

        imgs = self._images(pipe, [p for p, _ in self.target])
        names = [n for _ in range(self.config.selection_seeds) for _, n in self.target]
        shown = [bool(self.judge.shows([im], n)[0]) for im, n in zip(imgs, names)]
        preds = self.judge.predict(self._images(pipe, [p for p, _ in self.retain]))
        asked = [a for _ in range(self.config.selection_seeds) for _, a in self.retain]
        acc = float(np.mean([all(p.get(k) == v for k, v in a.items()) for p, a in zip(preds, asked)])) if asked else 1.0
        return float(np.mean(shown)), acc


# ---------------------------------------------------------------- erase


def erase(
    pipe, concept, config: RECEConfig | None = None, *, checkpoint_dir=None, callback=None, cancel=None, progress=True, stop_when=None
) -> ErasureResult:
    """Erase `concept` (a Concept or a list of them) from `pipe.unet`'s K/V in place: UCE, then `epochs`
    rounds of derive -> erase. `checkpoint_dir` and `stop_when` are the common interface: seconds of solves, nothing to resume
    or stop (a stop rule is a clear error)."""
    if stop_when is not None:
        from .stopping import check_method

        check_method("rece")  # the clear error: a closed form has nothing to stop
    config = config or RECEConfig()
    t0 = time.perf_counter()
    ucfg = config.uce_config()
    concept, guides, uce_preserve = uce.resolve(pipe, concept, ucfg)
    prompts = concept.prompts
    preserve = [""] * len(prompts) + [p for p in dict.fromkeys([*concept.retain, *config.preserve]) if p != ""]
    layers = uce.kv_layers(pipe.unet, config.with_to_k)
    validator = _Validator(pipe, prompts, config) if config.selection == "judge" else None
    tracker = KVTracker(layers)  # Gram of the original K/V (before any edit)
    emit = relay(callback, concept=concept.name)

    emb = uce.encode(pipe, prompts + guides + preserve + uce_preserve)  # each (77, d), float64

    # step 0: UCE (§2.2)
    C, G, P = uce.row_pairs(pipe, prompts, guides, uce_preserve, ucfg.token_policy, emb=emb)
    weights, U = uce.edit_layers(
        layers,
        C,
        G,
        P,
        lamb=ucfg.lamb,
        erase_scale=ucfg.erase_scale,
        preserve_scale=uce.preserve_weight(ucfg.preserve_scale, uce_preserve),
        stage="rece-uce",
        callback=emit,
        cancel=cancel,
        progress=False,
        collect=validator is not None or config.epochs == 0,
    )
    tracker.update(U)

    P_rows = torch.cat([emb[p] for p in preserve])
    history, selected, best = [], 0, None
    best_weights = weights
    if validator is not None:
        rate, acc = validator.score(pipe)
        best = rate
        history.append({"epoch": 0, "concept_rate": rate, "retained": acc})
    for epoch in range(config.epochs):
        if is_cancelled(cancel):
            raise Cancelled(f"RECE cancelled before epoch {epoch + 1} of {config.epochs}; nothing was saved")
        S, Pm = tracker.sums()
        derived = [
            derive(emb[p], S, Pm, derivation=config.derivation, regular_scale=config.regular_scale, reg_item=config.reg_item, target=emb[g])
            for p, g in zip(prompts, guides)
        ]  # each (77, d)
        C = torch.cat(derived)
        G = torch.cat([emb[g] for g in guides])
        weights, U = uce.edit_layers(
            layers,
            C,
            G,
            P_rows,
            lamb=config.lamb,
            erase_scale=config.erase_scale,
            preserve_scale=config.preserve_scale,
            stage="rece-edit",
            cancel=cancel,
            progress=False,
            collect=validator is not None or epoch == config.epochs - 1,
        )
        tracker.update(U)
        info = {"epoch": epoch + 1, "embedding_norm": float(torch.stack([d.norm(dim=-1).mean() for d in derived]).mean())}
        stop = False
        if validator is not None:
            rate, acc = validator.score(pipe)
            info.update(concept_rate=rate, retained=acc)
            if rate < best and acc >= validator.original_acc - 0.1:
                best, selected = rate, epoch + 1
                best_weights = weights
            stop = rate == 0
        else:
            selected, best_weights = epoch + 1, weights
        history.append(info)
        if emit is not None:
            emit(event("rece", epoch + 1, config.epochs, **{k: v for k, v in info.items() if k != "epoch"}))
        if stop:
            break
    if validator is not None and selected != len(history) - 1:  # put the selected epoch's weights back
        params = dict(pipe.unet.named_parameters())
        with torch.no_grad():
            for k, v in best_weights.items():
                params[k].copy_(v)
    stats = {
        "steps": config.epochs,
        "seconds": round(time.perf_counter() - t0, 4),
        "unet_evals": validator.unet_evals if validator else 0,
        "layers": len(layers),
        "selected_epoch": selected,
        "epochs": history,
        "guides": guides,
        "preserve": preserve,
    }
    return ErasureResult("rece", concept, config_dict(config), "unet", best_weights, stats)


# erase until erased (erasers.stopping): a closed form has no steps to stop; its trade-off is a scale, chosen once
STOP_WHEN = (
    "is closed-form (one edit, no training steps; its erasure/utility trade-off is its erase_scale, swept by benchmarks/preset_sweep.py)"
)

# several concepts into one model (erasers.several_concepts): every concept's rows in the same solve
SEVERAL_CONCEPTS = "one solve"

# The toy world's preset, from the committed sweeps `benchmarks/uce_sweep.py --method rece` (step 0 = the UCE toy
# preset, the other concepts of the kind preserved as `uce.toy_target` does; criterion of the other methods).
# With RECE's official edit (lamb 0.1, preserve_scale 0.1; rece_sweep.md) every epoch erases more but breaks the
# other concepts (retained 25-94% of the original's; 3 epochs: <= 74%). With UCE's ridge and preserve weight
# (rece_sweep_preserve.md, _preserve3.md) one epoch at regular_scale 1e-3 (the README's value for objects and art)
# comes closest: triangle 31% shown at 94% retained, striped 38% at 88% (two images short of 90%); a second epoch
# costs more of the rest. No setting met the criterion on both concepts; this is the closest, kept as the preset.
TOY_PRESETS: dict = {"rece": {"epochs": 1, "regular_scale": 1e-3, "lamb": 0.5, "preserve_scale": 1.0, "uce_erase_scale": 0.3}}


toy_target = uce.toy_target  # RECE starts from UCE: the same toy target (the other concepts of the kind preserved)
