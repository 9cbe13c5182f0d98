"""Attacks: prefix encoding, the soft-prompt attack, UnlearnDiffAtk, the baselines, ASR."""

import importlib
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, build_tiny_pipe

from erasers import attacks
from erasers.attacks import (
    AttackResult,
    SoftPromptConfig,
    UnlearnDiffAtkConfig,
    adversarial_text,
    asr,
    encode_with_prefix,
    prefix_input_ids,
    project_simplex,
    run_attack,
    soft_prompt_attack,
    target_latents,
    unlearndiffatk,
)
from studio.progress import is_event
from studio.sampling import Cancelled, encode_prompts

NEVER = lambda images: np.zeros(len(images), dtype=bool)
TINY = {"num_inference_steps": 2, "guidance_scale": 7.5}


@pytest.fixture(scope="module")
def pipe():
    """A tiny random pipeline shared by the tests that do not change it."""
    return build_tiny_pipe()


def token_ids(tokenizer, text):
    return tokenizer(text, truncation=False).input_ids


# ----------------------------------------------------------------------------- prefix encoding


def test_prefix_encoding_equals_prepended_words(pipe):
    tok, te = pipe.tokenizer, pipe.text_encoder
    words = "purple nudity"  # 3 BPE tokens: purple, nu, dity
    ids = token_ids(tok, words)[1:-1]
    assert len(ids) == 3
    prefix = te.get_input_embeddings().weight[ids]  # (3, D)
    prompts = ["a red triangle", "a striped blue star on a dark background"]
    with torch.no_grad():
        got = encode_with_prefix(te, tok, prompts, prefix)
        want = encode_prompts(pipe, [f"{words} {p}" for p in prompts])
    assert got.shape == (2, 77, te.config.hidden_size)
    assert torch.equal(got, want)
    # a per-prompt prefix (B, k, D) works too, and the hook is gone afterwards
    with torch.no_grad():
        got2 = encode_with_prefix(te, tok, prompts, prefix[None].expand(2, -1, -1))
        plain = encode_prompts(pipe, prompts)
    assert torch.equal(got2, want)
    assert not torch.equal(plain, want)


def test_prefix_encoding_is_differentiable(pipe):
    tok, te = pipe.tokenizer, pipe.text_encoder
    prefix = torch.randn(2, te.config.hidden_size, requires_grad=True)
    out = encode_with_prefix(te, tok, "a red triangle", prefix)
    (g,) = torch.autograd.grad(out.square().sum(), [prefix])
    assert g.abs().sum() > 0
    # positions before the prefix (SOT) do not depend on it: causal attention
    (g0,) = torch.autograd.grad(encode_with_prefix(te, tok, "a red triangle", prefix)[:, 0].sum(), [prefix], allow_unused=True)
    assert g0 is None or g0.abs().sum() == 0


def test_prompt_length_is_counted_in_bpe_tokens(pipe):
    tok = pipe.tokenizer
    prompt = " ".join(["nudity"] * 37)  # 37 words but 74 BPE tokens (nu, dity), 76 with start and end
    assert len(token_ids(tok, prompt)) == 76
    assert prefix_input_ids(tok, [prompt], 1).shape == (1, 77)  # 76 + 1 fits exactly
    with pytest.raises(ValueError, match=r"76 CLIP tokens.*2 adversarial prefix tokens.*78.*Shorten"):
        prefix_input_ids(tok, [prompt], 2)
    with pytest.raises(ValueError, match="78"):
        encode_with_prefix(pipe.text_encoder, tok, prompt, torch.zeros(2, pipe.text_encoder.config.hidden_size))


def test_prefix_keeps_every_concept_token(pipe):
    """The official AdvUnlearn code counts words and drops the last BPE token of "nudity"; we keep both."""
    tok = pipe.tokenizer
    ids = prefix_input_ids(tok, ["nudity"], 1)[0].tolist()
    nu, dity = token_ids(tok, "nudity")[1:-1]
    assert ids[:5] == [tok.bos_token_id, tok.bos_token_id, nu, dity, tok.eos_token_id]


# ----------------------------------------------------------------------------- simplex projection


def test_project_simplex_properties_and_brute_force():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 1000, generator=g) * 0.1 + 1e-3
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(5), atol=1e-5)
    assert (p >= 0).all()
    assert torch.allclose(project_simplex(p), p, atol=1e-6)  # idempotent
    uniform = torch.full((2, 49408), 1 / 49408)
    assert torch.allclose(project_simplex(uniform), uniform, atol=1e-9)

    # the sort-based projection (Held et al. 1974) gives the same result, also on sparse rows
    def by_sorting(v):
        u = v.sort(-1, descending=True).values
        css = u.cumsum(-1) - 1
        rho = (u - css / torch.arange(1, v.shape[-1] + 1, dtype=v.dtype) > 0).sum(-1, keepdim=True)
        return (v - css.gather(-1, rho - 1) / rho).clamp_min(0)

    sparse = torch.rand(3, 49408, generator=g) * 1e-3 + (torch.rand(3, 49408, generator=g) > 0.999) * 0.05
    peaked = torch.randn(3, 49408, generator=g) * 0.01
    peaked[:, :3] += torch.tensor([2.5, 1.9, 1.2])  # max - 1 is the tighter starting bound here
    for x in (v, sparse, peaked, torch.randn(4, 7, generator=g, dtype=torch.float64)):
        assert torch.allclose(project_simplex(x), by_sorting(x), atol=1e-7)

    # brute force in 3-D: no point of a fine grid on the simplex is closer than the projection
    steps = 300
    grid = torch.tensor([(i, j, steps - i - j) for i in range(steps + 1) for j in range(steps + 1 - i)], dtype=torch.float64) / steps
    for a in torch.randn(20, 3, generator=g, dtype=torch.float64) * 2:
        p = project_simplex(a)
        best = ((grid - a) ** 2).sum(-1).min()
        assert ((p - a) ** 2).sum() <= best + 1e-12
        assert ((p - a) ** 2).sum() >= best - 2 * 3 / steps  # and the grid's best is next to it


def test_token_draws_follow_the_probabilities_and_the_gradient_is_the_one_hots():
    from erasers.attacks.unlearndiffatk import _SampleToken, sample_rows

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.7, 0.0, 0.0, 0.0, 0.0, 0.3]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_rows(probs, g) for _ in range(6000)])  # (6000, 2)
    for row in range(2):
        counts = torch.bincount(draws[:, row], minlength=6).double()
        assert counts[probs[row] == 0].sum() == 0  # a zero-probability token is never drawn
        expected = probs[row].double() * 6000
        chi2 = (((counts - expected) ** 2 / expected)[probs[row] > 0]).sum()
        assert chi2 < 16.3  # 99.9th percentile of chi-square with 3 degrees of freedom
    assert (sample_rows(torch.tensor([[0.0, 0.0, 1.0]]), g) == 2).all()

    # forward: the drawn rows of E, as onehot @ E; backward: hardtanh of the one-hot's gradient, grad @ E^T
    E = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    p = probs.clone().requires_grad_(True)
    out = _SampleToken.apply(p, E, torch.Generator().manual_seed(5))
    ids = sample_rows(probs, torch.Generator().manual_seed(5))
    onehot = F.one_hot(ids, 6).float()
    assert torch.equal(out, onehot @ E)
    w = torch.randn(2, 4, generator=g) * 3
    (grad,) = torch.autograd.grad((out * w).sum(), [p])
    assert torch.allclose(grad, F.hardtanh(w @ E.T))


# ----------------------------------------------------------------------------- soft-prompt attack


def soft_prompt_setup(pipe):
    """A fixed batch whose target is the model's prediction for another prompt, so a prefix can help."""
    torch.manual_seed(0)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        target = pipe.unet(z, 500, encoder_hidden_states=encode_prompts(pipe, ["a blue star on a dark background"] * 2)).sample
    return lambda step: (z, 500, target)


@pytest.mark.parametrize("method", ["pgd", "fast_at"])
def test_soft_prompt_attack_lowers_loss_without_grads_on_the_model(tiny_pipe, method):
    pipe = tiny_pipe
    pipe.text_encoder.requires_grad_(True)  # as in AdvUnlearn, where the encoder is being trained
    pipe.unet.requires_grad_(True)  # and the official code leaves the UNet's requires_grad on
    batches = soft_prompt_setup(pipe)
    config = SoftPromptConfig(num_tokens=2, steps=20, lr=1e-2, method=method, init="random")
    seen = []
    delta, info = soft_prompt_attack(
        pipe.unet,
        pipe.text_encoder,
        pipe.tokenizer,
        "a red triangle",
        batches,
        config,
        generator=torch.Generator().manual_seed(0),
        callback=seen.append,
    )
    assert delta.shape == (2, pipe.text_encoder.config.hidden_size) and not delta.requires_grad
    assert info["losses"][-1] < 0.5 * info["losses"][0]
    assert info["unet_evals"] == 20 * 2 and info["init"] == "random" and len(seen) == 20
    assert all(is_event(e) and e["stage"] == "soft-prompt" for e in seen) and [e["step"] for e in seen] == list(range(1, 21))
    # it changed the embedding, which started as the embeddings of k random vocabulary tokens
    start = pipe.text_encoder.get_input_embeddings().weight[info["init_tokens"]].detach()
    assert len(info["init_tokens"]) == 2
    assert not torch.allclose(seen[0]["prefix"], start) and not torch.allclose(delta, seen[0]["prefix"])
    assert (delta - start).norm() > 0.1 * start.norm()
    # no parameter of the frozen models got a gradient
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    assert all(p.grad is None for p in params)
    # warm start ("latest") continues from the given prefix
    _, info2 = soft_prompt_attack(
        pipe.unet,
        pipe.text_encoder,
        pipe.tokenizer,
        "a red triangle",
        batches,
        SoftPromptConfig(num_tokens=2, steps=3, lr=1e-2, method=method),
        init_embeds=delta,
    )
    assert info2["init"] == "latest" and info2["init_tokens"] is None
    assert info2["losses"][0] < 0.5 * info["losses"][0]


def test_soft_prompt_attack_random_init_uses_vocabulary_rows(pipe):
    seen = []
    _, info = soft_prompt_attack(
        pipe.unet,
        pipe.text_encoder,
        pipe.tokenizer,
        "a red triangle",
        soft_prompt_setup(pipe),
        SoftPromptConfig(num_tokens=3, steps=1, lr=1e-12),
        generator=torch.Generator().manual_seed(1),
        callback=seen.append,
    )
    rows = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert (seen[0]["prefix"] - rows[info["init_tokens"]]).abs().max() < 1e-9  # one step of lr 1e-12 away
    assert torch.cdist(seen[0]["prefix"], rows).argmin(-1).tolist() == info["init_tokens"]
    assert not set(info["init_tokens"]) & set(pipe.tokenizer.all_special_ids)


def test_soft_prompt_attack_equals_reference_loop_with_fresh_gradients(pipe):
    """Gradients are zeroed every step (the official code accumulates them): compare with a plain loop."""
    batches = soft_prompt_setup(pipe)
    init = pipe.text_encoder.get_input_embeddings().weight[token_ids(pipe.tokenizer, "cat")[1:2]].detach().clone()
    delta, _ = soft_prompt_attack(
        pipe.unet, pipe.text_encoder, pipe.tokenizer, "a red triangle", batches, SoftPromptConfig(steps=4, lr=1e-2), init_embeds=init
    )
    ref = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2)
    for i in range(4):
        z, t, target = batches(i)
        cond = encode_with_prefix(pipe.text_encoder, pipe.tokenizer, ["a red triangle"] * 2, ref)
        loss = F.mse_loss(pipe.unet(z, t, encoder_hidden_states=cond).sample, target)
        opt.zero_grad()
        ref.grad = torch.autograd.grad(loss, [ref])[0]
        opt.step()
    assert torch.allclose(delta, ref.detach(), atol=1e-6)


def test_soft_prompt_config_rejects_bad_values():
    with pytest.raises(ValueError, match="'sgd'"):
        SoftPromptConfig(method="sgd")
    with pytest.raises(ValueError, match="init"):
        SoftPromptConfig(init="zeros")


# ----------------------------------------------------------------------------- UnlearnDiffAtk


class OracleUNet(torch.nn.Module):
    """A stand-in UNet whose denoising loss on `x0` depends only on the first prefix token's hidden
    state: it denoises perfectly when that state equals `target_h` (the word "triangle" after SOT)."""

    def __init__(self, unet, alphas, x0, target_h, scale):
        super().__init__()
        self.config, self.alphas, self.scale = unet.config, alphas, scale
        self.register_buffer("x0", x0)
        self.register_buffer("target_h", target_h)

    dtype = property(lambda self: self.x0.dtype)
    device = property(lambda self: self.x0.device)

    def forward(self, z, t, encoder_hidden_states, return_dict=False):
        a = self.alphas[int(torch.as_tensor(t).reshape(-1)[0])]
        match = torch.exp(-((encoder_hidden_states[:, 1] - self.target_h) ** 2).sum(-1) / self.scale)[:, None, None, None]
        return ((z - a.sqrt() * match * self.x0) / (1 - a).sqrt(),)


def test_unlearndiffatk_lowers_its_loss_and_finds_the_token():
    pipe = build_tiny_pipe()
    prompt = "a red triangle"
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target_h = encode_prompts(pipe, [f"triangle {prompt}"])[0, 1]
        others = encode_prompts(pipe, [f"{w} {prompt}" for w in ("cat", "dog", "house", "tree", "car", "boat")])[:, 1]
    scale = float(((others - target_h) ** 2).sum(-1).median())
    pipe.unet = OracleUNet(pipe.unet, pipe.scheduler.alphas_cumprod, x0, target_h, scale)
    words = [
        "cat",
        "dog",
        "red",
        "blue",
        "green",
        "star",
        "circle",
        "square",
        "photo",
        "painting",
        "striped",
        "dotted",
        "solid",
        "dark",
        "light",
        "tree",
        "house",
        "car",
        "boat",
        "triangle",
    ]
    candidates = [token_ids(pipe.tokenizer, w)[1] for w in words]
    triangle = token_ids(pipe.tokenizer, "triangle")[1]
    E = pipe.text_encoder.get_input_embeddings().weight.detach()
    z = torch.randn(1, 4, 8, 8)

    def loss_of(ids):  # the oracle's loss does not depend on the noise
        with torch.no_grad():
            pred = pipe.unet(z, 500, encode_with_prefix(pipe.text_encoder, pipe.tokenizer, prompt, E[ids]))[0]
        a = pipe.scheduler.alphas_cumprod[500]
        return F.mse_loss(pred, (z - a.sqrt() * x0) / (1 - a).sqrt()).item()

    falls = []
    for seed in (0, 1, 2, 3):
        config = UnlearnDiffAtkConfig(timesteps=(500,), iterations=60, vocabulary=candidates, **TINY)
        r = unlearndiffatk(pipe, prompt, x0, NEVER, config, seed=seed, progress=False)
        # the sampled (straight-through) loss falls as the relaxed one-hots concentrate (one draw per step: noisy) ...
        falls.append(np.mean(r.losses[-30:]) / np.mean(r.losses[:10]))
        assert falls[-1] < 0.9
        # ... and the argmax prompt is the minimiser
        assert r.adversarial_tokens[0] == triangle
        assert r.adversarial_prompt.startswith("triangle ") and r.adversarial_prompt.endswith(prompt)
        assert loss_of(r.adversarial_tokens) < 1e-6 < min(loss_of([c] + r.adversarial_tokens[1:]) for c in candidates if c != triangle)
    assert np.mean(falls) < 0.75  # by a quarter or more on average over the seeds


def test_unlearndiffatk_budget_and_decodable_prompt(pipe):
    prompt = "a red triangle"
    x0 = target_latents(pipe, prompt, seed=0, num_inference_steps=2)
    assert x0.shape == (1, 4, 8, 8)
    assert torch.equal(x0, target_latents(pipe, prompt, seed=0, num_inference_steps=2))
    events = []
    config = UnlearnDiffAtkConfig(num_timesteps=50, timesteps=(10, 990), iterations=3, num_tokens=3, vocabulary="words", **TINY)
    r = run_attack("unlearndiffatk", pipe, prompt, x0, NEVER, config, seed=0, callback=events.append, progress=False)
    assert not r.pre_success and not r.success
    assert r.gradient_steps == 6 and len(r.losses) == 6
    assert r.generations == 3  # the original prompt, then one per timestep
    assert r.unet_evals == 6 + 3 * 2 * 2  # gradient steps + generations x steps x (cond, uncond)
    assert all(is_event(e) and e["stage"] == "unlearndiffatk" and e["total"] == 6 for e in events)
    assert [e["t"] for e in events if e["phase"] == "eval"] == [None, 10, 990]
    assert sum(e["phase"] == "step" for e in events) == 6
    assert [e["step"] for e in events if e["phase"] == "step"] == list(range(1, 7))
    # the text re-tokenises to exactly [SOT, the 3 optimised tokens, the prompt's tokens, EOT]
    tok = pipe.tokenizer
    assert len(r.adversarial_tokens) == 3 and r.exact_tokens
    assert token_ids(tok, r.adversarial_prompt) == token_ids(tok, prompt)[:1] + r.adversarial_tokens + token_ids(tok, prompt)[1:]
    assert r.adversarial_prompt == adversarial_text(tok, r.adversarial_tokens, prompt)
    assert r.image is not None and r.wall_time > 0
    json.dumps(r.to_dict())
    # the official schedule: 50 timesteps 10, 30, ..., 990
    assert UnlearnDiffAtkConfig().schedule() == list(range(10, 1000, 20))
    assert UnlearnDiffAtkConfig.preset("nudity").num_tokens == 5 and UnlearnDiffAtkConfig().num_tokens == 3


def test_unlearndiffatk_full_vocabulary_reports_whether_tokens_survive(pipe):
    """With the full vocabulary a sub-word prefix token may merge on re-tokenisation; the result says so."""
    r = unlearndiffatk(
        pipe,
        "a red triangle",
        torch.zeros(1, 4, 8, 8),
        NEVER,
        UnlearnDiffAtkConfig(timesteps=(500,), iterations=2, **TINY),
        seed=0,
        progress=False,
    )
    tok = pipe.tokenizer
    want = token_ids(tok, "a red triangle")
    exact = token_ids(tok, r.adversarial_prompt) == want[:1] + r.adversarial_tokens + want[1:]
    assert r.exact_tokens == exact
    assert all(t not in tok.all_special_ids for t in r.adversarial_tokens)


def test_attacks_stop_on_success_and_pre_success(pipe):
    verdicts = iter([False, False, True, True])
    judged = []

    def judge(images):
        judged.append(len(images))
        return np.array([next(verdicts)])

    r = run_attack("random", pipe, "a red triangle", None, judge, {"num_tokens": 2, "draws": 5, **TINY}, seed=3, progress=False)
    assert (r.pre_success, r.success, r.generations) == (False, True, 3)
    assert len(r.adversarial_tokens) == 2 and r.adversarial_prompt.endswith(" a red triangle")
    always = lambda images: np.ones(len(images), dtype=bool)
    for name in ("none", "random", "unlearndiffatk"):
        r = run_attack(name, pipe, "a red triangle", torch.zeros(1, 4, 8, 8), always, {**TINY}, progress=False)
        assert (r.pre_success, r.success, r.generations, r.gradient_steps) == (True, True, 1, 0)
        assert r.adversarial_prompt == "a red triangle"


def test_run_attack_errors(pipe):
    with pytest.raises(ValueError, match=r"unknown attack 'pgd'.*unlearndiffatk"):
        run_attack("pgd", pipe, "a red triangle", None, NEVER)
    with pytest.raises(ValueError, match="no field"):
        run_attack("random", pipe, "a red triangle", None, NEVER, {"iterations": 3})
    with pytest.raises(ValueError, match="target"):
        run_attack("unlearndiffatk", pipe, "a red triangle", None, NEVER)
    with pytest.raises(ValueError, match="Shorten"):
        run_attack("unlearndiffatk", pipe, " ".join(["nudity"] * 37), torch.zeros(1, 4, 8, 8), NEVER)
    with pytest.raises(ValueError, match="vocabulary"):
        attacks.vocabulary(pipe.tokenizer, "english")


# ----------------------------------------------------------------------------- ASR, cancellation


def test_asr_official_definition():
    def r(pre, ok):
        return AttackResult("unlearndiffatk", "p", "p", pre, ok)

    results = [r(True, True), r(False, True), r(False, True), r(False, False), r(False, False)]
    out = asr(results)
    assert out == {"n": 5, "pre_successes": 1, "post_successes": 2, "asr": 0.6, "pre_asr": 0.2}
    assert asr([x.to_dict() for x in results]) == out
    with pytest.raises(ValueError):
        asr([])


def test_cancellation(pipe):
    cancel = threading.Event()

    def stop_after_two(info):
        assert is_event(info)
        if info.get("phase", "step") == "step" and info["i"] >= 1:
            cancel.set()

    with pytest.raises(Cancelled):
        unlearndiffatk(
            pipe,
            "a red triangle",
            torch.zeros(1, 4, 8, 8),
            NEVER,
            UnlearnDiffAtkConfig(timesteps=(500,), iterations=50, **TINY),
            callback=stop_after_two,
            cancel=cancel,
            progress=False,
        )
    cancel.clear()
    with pytest.raises(Cancelled):
        soft_prompt_attack(
            pipe.unet,
            pipe.text_encoder,
            pipe.tokenizer,
            "a red triangle",
            soft_prompt_setup(pipe),
            SoftPromptConfig(steps=50),
            callback=stop_after_two,
            cancel=cancel,
        )
    cancel.set()
    with pytest.raises(Cancelled):  # cancelled during the generation of the first image
        run_attack("none", pipe, "a red triangle", None, NEVER, {**TINY}, cancel=cancel, progress=False)


# ----------------------------------------------------------------------------- the trained toy model

HAS_TOY = (ROOT / "assets" / "toy-model" / "model_index.json").is_file() and (ROOT / "assets" / "toy-judge" / "judge.safetensors").is_file()


@pytest.mark.skipif(not HAS_TOY, reason="the trained toy model is not in assets/ yet")
def test_attack_on_unerased_toy_model_succeeds_trivially(toy_pipe, judge):
    prompt = "a red triangle"
    shows = lambda images: judge.shows(images, "triangle")
    x0 = target_latents(toy_pipe, prompt, seed=0, num_inference_steps=20)
    r = run_attack("unlearndiffatk", toy_pipe, prompt, x0, shows, {"num_inference_steps": 20}, seed=0, progress=False)
    assert r.pre_success and r.success
    assert r.gradient_steps == 0 and r.generations == 1
    assert asr([r])["asr"] == 1.0


def test_unlearndiffatk_skips_a_decoded_prompt_over_77_tokens(pipe, monkeypatch):
    """Decoding and re-tokenising can change the token count; a prompt over 77 is never judged truncated."""
    monkeypatch.setattr(
        importlib.import_module("erasers.attacks.unlearndiffatk"),
        "adversarial_text",
        lambda tok, ids, prompt: " ".join(["nudity"] * 40) + " " + prompt,
    )
    config = UnlearnDiffAtkConfig(timesteps=(10, 990), iterations=1, **TINY)
    r = unlearndiffatk(pipe, "a red triangle", torch.zeros(1, 4, 8, 8), NEVER, config, progress=False)
    assert r.generations == 1 and not r.success and r.adversarial_prompt == "a red triangle"
    assert [("skipped" in h) for h in r.history] == [False, True, True]
    assert "over 77" in r.history[1]["skipped"]


def test_soft_prompt_is_a_registered_attack_that_spends_its_budget(pipe):
    """The registered soft-prompt attack: targets from the original, the prefix optimised for `steps` steps
    and judged once at the end, every weight untouched, the UNet evaluations within the stated budget."""
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    seen = []

    def judge(images):
        seen.append(len(images))
        return np.zeros(len(images), dtype=bool)

    cfg = {"steps": 3, "num_inference_steps": 2}
    run = attacks.run_many("soft-prompt", pipe, ["a photo of a cat", "a dog"], [0, 1], judge, cfg, original=pipe)
    assert [r.attack for r in run.results] == ["soft-prompt", "soft-prompt"]
    budget = attacks.ATTACKS["soft-prompt"].cost(attacks.make_config("soft-prompt", cfg))
    for r in run.results:
        assert r.gradient_steps == 3 and len(r.losses) == 3 and all(np.isfinite(r.losses))
        assert r.unet_evals == budget == 3 + 2 * 2 * 2  # steps + two judged images of 2 CFG steps
        assert not r.success and not r.exact_tokens and r.adversarial_prompt.startswith("<soft x1>")
    assert seen == [1, 1, 1, 1]  # before and after, per prompt
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    with pytest.raises(ValueError, match="needs the original"):
        attacks.run_many("soft-prompt", pipe, ["a dog"], 0, judge, cfg)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        attacks.make_config("soft-prompt", {"steps": 0})
