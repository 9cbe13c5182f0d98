"""UCE: the closed form against its objective, the token policies, what changes, inputs, and the toy erasure."""

import threading

import numpy as np
import pytest
import torch

from erasers import Concept
from erasers.uce import TOY_PRESETS, UCEConfig, toy_target, closed_form, edit_layers, erase, kv_layers, last_word_index, resolve, row_pairs
from studio.loading import load_pipeline
from studio.progress import is_event
from studio.sampling import Cancelled, encode_prompts

from conftest import build_tiny_pipe


def objective(W, W_ref, lamb, rows):
    return lamb * ((W - W_ref) ** 2).sum() + sum(s * ((C @ W.T - V) ** 2).sum() for C, V, s in rows)


def descend(W_ref, lamb, rows, steps=20000):
    """The minimiser of the UCE objective by plain gradient descent (step 1/L, L the gradient's Lipschitz constant)."""
    d = W_ref.shape[1]
    A = lamb * torch.eye(d, dtype=torch.float64) + sum(s * C.T @ C for C, _, s in rows)
    lr = 1.0 / (2 * torch.linalg.eigvalsh(A).max().item())
    W = W_ref.clone().requires_grad_(True)
    for _ in range(steps):
        (g,) = torch.autograd.grad(objective(W, W_ref, lamb, rows), W)
        with torch.no_grad():
            W -= lr * g
    return W.detach()


def test_closed_form_equals_the_gradient_descent_minimiser():
    g = torch.Generator().manual_seed(0)
    W_ref = torch.randn(5, 6, generator=g, dtype=torch.float64)
    C_e, V_e = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    C_p = torch.randn(2, 6, generator=g, dtype=torch.float64)
    rows = [(C_e, V_e, 1.0), (C_p, C_p @ W_ref.T, 0.3)]
    W_star = closed_form(W_ref, 0.5, rows)
    W_gd = descend(W_ref, 0.5, rows, steps=5000)
    assert torch.allclose(W_star, W_gd, atol=1e-8), (W_star - W_gd).abs().max()
    # and it is a minimum: any perturbation raises the objective
    assert objective(W_star, W_ref, 0.5, rows) < objective(
        W_star + 1e-3 * torch.randn(5, 6, generator=g, dtype=torch.float64), W_ref, 0.5, rows
    )


def test_rank_one_shortcut_and_the_limits_of_the_note():
    """§0.3: one erase row, no preserve rows -> W* = W + s (v - W c) cᵀ / (lamb + s ||c||²); with lamb -> 0, W* c = v."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(7, 4, generator=g, dtype=torch.float64)
    c, v = torch.randn(1, 4, generator=g, dtype=torch.float64), torch.randn(1, 7, generator=g, dtype=torch.float64)
    s, lamb = 2.0, 0.5
    sherman = W + s * (v - c @ W.T).T @ c / (lamb + s * (c @ c.T))
    assert torch.allclose(closed_form(W, lamb, [(c, v, s)]), sherman, atol=1e-12)
    exact = closed_form(W, 1e-9, [(c, v, 1.0)])
    assert torch.allclose(c @ exact.T, v, atol=1e-6)
    # only preserve rows (targets W c): the solve returns W exactly
    C_p = torch.randn(3, 4, generator=g, dtype=torch.float64)
    assert torch.equal(closed_form(W, lamb, [(C_p, C_p @ W.T, 1.0)]), W)
    assert torch.equal(closed_form(W, lamb, []), W)


def test_an_empty_erase_set_changes_nothing(tiny_pipe):
    layers = kv_layers(tiny_pipe.unet)
    before = {n: l.weight.detach().clone() for n, l in layers.items()}
    _, _, P = row_pairs(tiny_pipe, [], [], ["a square", "a circle"], "last_to_end")
    empty = torch.zeros(0, P.shape[1], dtype=torch.float64)
    weights, U = edit_layers(layers, empty, empty, P, lamb=0.5, erase_scale=1.0, preserve_scale=1.0)
    assert all(torch.equal(layers[n].weight, w) for n, w in before.items())
    assert torch.equal(U, torch.eye(P.shape[1], dtype=torch.float64))


@pytest.mark.parametrize("policy", ["last_token", "last_to_end"])
def test_several_concepts_in_one_solve_equal_the_objectives_minimiser(tiny_pipe, policy):
    layers = kv_layers(tiny_pipe.unet)
    original = {n: l.weight.detach().double().clone() for n, l in layers.items()}
    concepts = [Concept("a triangle", anchors=["a square"]), Concept("a red star")]
    config = UCEConfig(token_policy=policy, preserve=("a circle",), preserve_scale=0.7)
    merged, guides, preserve = resolve(tiny_pipe, concepts, config)
    assert guides == ["a square", ""] and "a circle" in preserve
    C, G, P = row_pairs(tiny_pipe, merged.prompts, guides, preserve, policy)
    result = erase(tiny_pipe, concepts, config, progress=False)
    assert result.concept.name == "a triangle+a red star" and result.stats["erase_rows"] == len(C)
    for name in list(original)[:2] + list(original)[-1:]:  # a key and a value of the first block, and the last layer
        W = original[name]
        rows = [(C, G @ W.T, 1.0), (P, P @ W.T, 0.7)]
        got = result.weights[f"{name}.weight"].double()
        if policy == "last_token":  # few rows, well conditioned: gradient descent converges to it
            expected = descend(W, 0.5, rows, steps=3000)
            assert torch.allclose(got, expected, atol=2e-5), (name, (got - expected).abs().max())
        else:  # ~150 nearly collinear padding rows: too ill-conditioned for plain descent to converge in a test;
            # the objective is convex, so a zero gradient proves the minimum, and descent never does better
            W_ = got.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(W_, W, 0.5, rows), W_)
            W0 = W.clone().requires_grad_(True)
            (grad0,) = torch.autograd.grad(objective(W0, W, 0.5, rows), W0)
            assert grad.norm() <= 1e-4 * grad0.norm(), (name, grad.norm(), grad0.norm())
            assert objective(got, W, 0.5, rows) <= objective(descend(W, 0.5, rows, steps=500), W, 0.5, rows)


def test_token_policies_take_the_documented_rows(tiny_pipe):
    tok = tiny_pipe.tokenizer
    assert last_word_index(tok, "") == 0 and last_word_index(tok, "a red triangle") == 3
    emb = encode_prompts(tiny_pipe, ["a red triangle", "a square", ""]).double()
    C, G, P = row_pairs(tiny_pipe, ["a red triangle"], ["a square"], ["a circle"], "last_token")
    assert torch.allclose(C, emb[0, 3:4]) and torch.allclose(G, emb[1, 2:3]) and len(P) == 1
    C, G, P = row_pairs(tiny_pipe, ["a red triangle"], [""], ["a circle"], "last_to_end")
    assert len(C) == len(G) == 74 and len(P) == 77  # 77 - 3 rows from the last word on; guide "" from SOT, trimmed
    assert torch.allclose(C, emb[0, 3:]) and torch.allclose(G, emb[2, :74])


def _drift(policy, preserve_scale, kept):
    """Worst relative change of the kept prompts' K/V outputs (their rows under `policy`) over every layer, and the
    worst remaining distance of the erased rows to their targets (1 = not moved) after erasing "a triangle" towards ""."""
    pipe = build_tiny_pipe()
    layers = kv_layers(pipe.unet)
    original = {n: l.weight.detach().double().clone() for n, l in layers.items()}
    concept = Concept("a triangle", retain=kept)
    config = UCEConfig(token_policy=policy, preserve_scale=preserve_scale)
    _, guides, preserve = resolve(pipe, concept, config)
    C, G, _ = row_pairs(pipe, ["a triangle"], guides, preserve, policy)
    probe = ["a square", "a circle"]
    _, _, R = row_pairs(pipe, [], [], probe, policy)  # the rows of the probed prompts under this policy
    result = erase(pipe, concept, config, progress=False)
    keep = hit = 0.0
    for name, W in original.items():
        W_new = result.weights[f"{name}.weight"].double()
        keep = max(keep, ((R @ W_new.T - R @ W.T).norm() / (R @ W.T).norm()).item())
        hit = max(hit, ((C @ W_new.T - G @ W.T).norm() / (C @ W.T - G @ W.T).norm()).item())
    return keep, hit


@pytest.mark.parametrize("policy, tolerance", [("last_token", 0.02), ("last_to_end", 0.05)])
def test_preserved_concepts_keep_their_keys_and_values(policy, tolerance):
    """Erasing "a triangle" with "a square" and "a circle" preserved (preserve_scale 10) on the tiny random model:
    their K/V outputs move by at most 2% (one row each, last_token) or 5% (all 77 rows, last_to_end, whose
    padding rows nearly coincide with the erased ones) of their norm, several times less than when they are
    not preserved, while the erased rows still move towards the guide's K/V."""
    kept_keep, kept_hit = _drift(policy, 10.0, ["a square", "a circle"])
    free_keep, _ = _drift(policy, 10.0, [])
    assert kept_keep <= tolerance, kept_keep
    assert kept_keep <= 0.5 * free_keep, (kept_keep, free_keep)
    assert kept_hit <= 0.9, kept_hit


def test_only_cross_attention_keys_and_values_change_and_the_model_saves(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "base")
    base = load_pipeline(tmp_path / "base", device="cpu")
    before = {n: p.clone() for n, p in base.unet.named_parameters()}
    te_before = {n: p.clone() for n, p in base.text_encoder.named_parameters()}
    result = erase(base, Concept("a triangle"), UCEConfig(), progress=False)
    changed = {n for n, p in base.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(result.weights)
    assert changed and all(".attn2." in n and n.endswith(("to_k.weight", "to_v.weight")) for n in changed)
    assert len(changed) == 2 * sum(1 for n in before if n.endswith("attn2.to_v.weight"))
    assert all(torch.equal(p, te_before[n]) for n, p in base.text_encoder.named_parameters())
    assert result.component == "unet" and result.stats["unet_evals"] == 0 and result.stats["seconds"] >= 0
    only_v = erase(build_tiny_pipe(), Concept("a triangle"), UCEConfig(with_to_k=False), progress=False)
    assert only_v.weights and all(n.endswith("to_v.weight") for n in only_v.weights)

    folder = result.save(tmp_path / "erased", base, base_model=str(tmp_path / "base"))
    loaded = load_pipeline(folder, device="cpu")
    for n, p in loaded.unet.named_parameters():
        assert torch.equal(p, dict(base.unet.named_parameters())[n]), n
    fresh = build_tiny_pipe()
    result.apply(fresh)
    assert all(torch.equal(fresh.unet.get_parameter(n), w) for n, w in result.weights.items())


def test_progress_events_and_cancel(tiny_pipe):
    events = []
    result = erase(tiny_pipe, Concept("a triangle"), UCEConfig(), callback=events.append, progress=False)
    assert events and all(is_event(e) and e["stage"] == "uce" for e in events)
    assert [e["step"] for e in events] == list(range(1, result.stats["layers"] + 1)) and events[-1]["total"] == result.stats["layers"]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        erase(build_tiny_pipe(), Concept("a triangle"), UCEConfig(), cancel=cancel, progress=False)


def test_bad_inputs_are_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match="both erased and preserved"):
        erase(tiny_pipe, Concept("a triangle", retain=["a triangle"]), UCEConfig(), progress=False)
    with pytest.raises(ValueError, match="both erased and preserved"):
        erase(tiny_pipe, Concept("a triangle"), UCEConfig(preserve=("A Triangle",)), progress=False)
    with pytest.raises(ValueError, match="mode 'edit'.*guide is empty"):
        erase(tiny_pipe, Concept("a triangle"), UCEConfig(mode="edit"), progress=False)
    with pytest.raises(ValueError, match="mode 'moderate'"):
        erase(tiny_pipe, Concept("a triangle", anchors=["a square"]), UCEConfig(mode="moderate"), progress=False)
    with pytest.raises(ValueError, match="CLIP takes at most 77"):
        erase(tiny_pipe, Concept("a red triangle " * 30), UCEConfig(), progress=False)
    with pytest.raises(ValueError, match="CLIP takes at most 77"):
        erase(tiny_pipe, Concept("a triangle", anchors=["a square " * 40]), UCEConfig(), progress=False)
    with pytest.raises(ValueError, match="2 guides"):
        erase(tiny_pipe, Concept(["a triangle", "a wedge", "a trigon"], anchors=["a square", "a circle"]), UCEConfig(), progress=False)
    with pytest.raises(ValueError, match="its own guide"):
        erase(tiny_pipe, Concept("a triangle", anchors=["a triangle"]), UCEConfig(), progress=False)
    with pytest.raises(ValueError, match="unknown UCE token_policy"):
        UCEConfig(token_policy="all")
    with pytest.raises(ValueError, match="lamb > 0"):
        closed_form(torch.zeros(2, 3), 0.0, [])


def test_uce_erases_a_toy_triangle_and_keeps_the_other_shapes(judge):
    """The toy preset (benchmarks/uce_sweep_retain.md), the other shapes preserved, lowers the judged rate of
    triangles; other shapes mostly stay. Measured here: triangle 100% -> 33%, other shapes 96% -> 81-85%; the
    closed form on the toy's 64-d text space costs more of the rest than ESD-x does (hence 0.8, not ESD's 0.85)."""
    from erasers.evaluate import EvalConfig, generate
    from studio.toyworld.captions import erasure_prompts, prompts_for

    pipe = load_pipeline("toy", device="cpu")
    cfg = EvalConfig(seeds=3, num_inference_steps=25)
    target = [p for p, _ in prompts_for("triangle", "direct", 8)]
    others = [p for s in ("circle", "square", "star") for p, _ in prompts_for(s, "direct", 3)]
    others_shape = [s for s in ("circle", "square", "star") for _ in range(3 * cfg.seeds)]
    before_rate = judge.shows(generate(pipe, target, cfg), "triangle").mean()
    before_keep = np.mean([p["shape"] == s for p, s in zip(judge.predict(generate(pipe, others, cfg)), others_shape)])
    target_concept = toy_target("triangle")
    assert target_concept.prompts == erasure_prompts("triangle") and "a circle" in target_concept.retain
    result = erase(pipe, target_concept, UCEConfig(**TOY_PRESETS["uce"]), progress=False)
    after_rate = judge.shows(generate(pipe, target, cfg), "triangle").mean()
    after_keep = np.mean([p["shape"] == s for p, s in zip(judge.predict(generate(pipe, others, cfg)), others_shape)])
    assert result.stats["unet_evals"] == 0
    assert before_rate >= 0.8
    assert after_rate <= 0.4, (before_rate, after_rate)
    assert after_keep >= 0.8 * before_keep, (before_keep, after_keep)
