"""P4D-N and P4D-K: projected tokens are vocabulary tokens that re-tokenise, batched == one at a time, budgets, errors,
and a high rate on the unerased toy model."""

import numpy as np
import pytest
import torch
from conftest import HAS_TOY, build_tiny_pipe

from erasers import attacks
from erasers.attacks import run_attack, run_many
from erasers.attacks.p4d import P4DConfig, P4DKConfig, P4DNConfig, decode, encode_sequence, layout, project, sequence_ids
from studio.sampling import encode_prompts

NEVER = lambda images: np.zeros(len(images), dtype=bool)
ALWAYS = lambda images: np.ones(len(images), dtype=bool)
PROMPTS = ["a red triangle", "a striped blue star on a dark background", "a dotted circle"]
TINY = {"iterations": 6, "eval_every": 3, "num_inference_steps": 2, "target_steps": 2, "prompt_len": 5}
TINY_K = {k: v for k, v in TINY.items() if k != "prompt_len"}


@pytest.fixture(scope="module")
def pipes():
    return build_tiny_pipe(0), build_tiny_pipe(1)  # erased, original


def ids_of(tok, text):
    return tok(text, truncation=False).input_ids


def test_official_defaults_and_budget():
    n, k = P4DNConfig(), P4DKConfig()
    assert (n.prompt_len, k.every_k, n.iterations, n.eval_every, n.lr, n.weight_decay, n.num_inference_steps) == (
        16,
        3,
        3000,
        50,
        0.1,
        0.1,
        25,
    )
    assert n.unet_budget() == 3000 * 2 + 61 * 25 * 2 == attacks.get("p4d-n").cost(n) == attacks.get("p4d-k").cost(k)
    assert P4DNConfig(iterations=70, eval_every=50, pre_attack=False, num_inference_steps=2).unet_budget() == 140 + 2 * 2 * 2
    toy = P4DKConfig.toy()
    assert isinstance(toy, P4DKConfig) and toy.iterations < n.iterations and toy.every_k == 3
    spec = attacks.get("p4d-n")
    assert spec.needs_original and spec.run is None and spec.run_many is not None and attacks.get("p4d-k").config is P4DKConfig


def test_layouts(pipes):
    tok = pipes[0].tokenizer
    assert layout(tok, "a red triangle", P4DNConfig()) == ([None] * 16, list(range(16)))  # the prompt is not in P4D-N's input
    a, red, tri = ids_of(tok, "a red triangle")[1:-1]
    assert layout(tok, "a red triangle", P4DKConfig())[0] == [None, a, red, tri, None]  # floor(3 / 3) + 1 learnable tokens
    seq, learn = layout(tok, "a striped blue star", P4DKConfig(every_k=2))
    assert seq[1:3] + seq[4:6] == ids_of(tok, "a striped blue star")[1:-1] and learn == [0, 3, 6]
    # an insertion point inside a word moves to the next word's start: "nudity" is nu + dity
    nu, dity, art = ids_of(tok, "nudity art")[1:-1]
    assert layout(tok, "nudity art", P4DKConfig(every_k=1))[0] == [None, nu, dity, None, None, art, None]
    with pytest.raises(ValueError, match="over CLIP's limit of 77.*Shorten"):
        layout(tok, " ".join(["cat"] * 60), P4DKConfig())
    with pytest.raises(ValueError, match="over CLIP's limit"):
        layout(tok, "a cat", P4DNConfig(prompt_len=76))


@pytest.mark.parametrize("name", ["p4d-n", "p4d-k"])
def test_projected_tokens_are_vocabulary_tokens_and_retokenise(pipes, name):
    erased, original = pipes
    tok, te = erased.tokenizer, erased.text_encoder
    config = attacks.make_config(name, TINY if name == "p4d-n" else TINY_K)
    for p in erased.unet.parameters():
        p.requires_grad_(True)  # grads must not land on the model anyway
    run = run_many(name, erased, PROMPTS, [0, 1, 2], NEVER, config, original=original, progress=False)
    assert all(p.grad is None for p in erased.unet.parameters()) and all(p.grad is None for p in te.parameters())
    words = set(attacks.vocabulary(tok, "words").tolist())
    for prompt, r in zip(PROMPTS, run.results):
        seq, learn = layout(tok, prompt, config)
        assert len(r.adversarial_tokens) == len(learn) and set(r.adversarial_tokens) <= words
        ids = sequence_ids(tok, seq, r.adversarial_tokens)
        assert r.adversarial_prompt == decode(tok, ids)
        assert ids_of(tok, r.adversarial_prompt) == [tok.bos_token_id, *ids, tok.eos_token_id] and r.exact_tokens
        if name == "p4d-k":
            assert all(w in r.adversarial_prompt.split() for w in prompt.split())  # the prompt's words stay whole
        # what was optimised is what is judged: the projected embeddings encode exactly as the decoded text
        E = te.get_input_embeddings().weight.detach()
        with torch.no_grad():
            got = encode_sequence(te, tok, [seq], [E[r.adversarial_tokens]])
            assert torch.equal(got, encode_prompts(erased, [r.adversarial_prompt]))
        assert r.gradient_steps == 6 and r.generations == 3 and r.unet_evals == config.unet_budget() == 12 + 3 * 2 * 2
        assert [h["iteration"] for h in r.history] == [0, 3, 6] and not r.success
    # the projection: a vocabulary row's nearest row by cosine is itself, at any scale
    vocab = attacks.vocabulary(tok, "words")
    E_v = torch.nn.functional.normalize(te.get_input_embeddings().weight.detach()[vocab], dim=-1)
    picks = torch.tensor([3, 500, 20000])
    assert torch.equal(project(3.0 * te.get_input_embeddings().weight.detach()[vocab[picks]], E_v, vocab), picks)


@pytest.mark.parametrize("name", ["p4d-n", "p4d-k"])
def test_batched_equals_one_at_a_time(pipes, name):
    erased, original = pipes
    base = TINY if name == "p4d-n" else TINY_K
    one = run_many(name, erased, PROMPTS, [5, 6, 7], NEVER, {**base, "batch_size": 1}, original=original, progress=False)
    many = run_many(name, erased, PROMPTS, [5, 6, 7], NEVER, {**base, "batch_size": 2}, original=original, progress=False)
    for a, b in zip(one.results, many.results):
        assert b.adversarial_tokens == a.adversarial_tokens and b.adversarial_prompt == a.adversarial_prompt
        assert [h["prompt"] for h in b.history] == [h["prompt"] for h in a.history]
        assert (b.success, b.gradient_steps, b.generations, b.unet_evals) == (a.success, a.gradient_steps, a.generations, a.unet_evals)
        np.testing.assert_allclose(b.losses, a.losses, rtol=1e-4, atol=1e-7)
    # per-prompt early stop: a judge that always says yes stops every prompt at its first evaluation
    run = run_many(name, erased, PROMPTS, 0, ALWAYS, {**base, "pre_attack": False, "batch_size": 2}, original=original, progress=False)
    assert [(r.pre_success, r.success, r.gradient_steps, r.generations) for r in run.results] == [(False, True, 3, 1)] * 3
    assert run.summary()["asr"] == 1.0


def test_bad_inputs_are_clear_errors(pipes):
    erased, original = pipes
    for bad in ({"iterations": 0}, {"eval_every": 0}, {"prompt_len": 0}):
        with pytest.raises(ValueError, match="budget of 0"):
            run_many("p4d-n", erased, PROMPTS[:1], 0, NEVER, bad, original=original)
    with pytest.raises(ValueError, match="budget of 0"):
        P4DKConfig(every_k=0)
    with pytest.raises(ValueError, match=r"needs the original \(unerased\) model"):
        run_many("p4d-k", erased, PROMPTS[:1], 0, NEVER, TINY_K)
    with pytest.raises(ValueError, match="set of prompts"):
        run_attack("p4d-n", erased, PROMPTS[0], None, NEVER)
    with pytest.raises(ValueError, match="no field"):
        run_many("p4d-k", erased, PROMPTS[:1], 0, NEVER, {"prompt_len": 3}, original=original)
    assert issubclass(P4DNConfig, P4DConfig)


@pytest.mark.skipif(not HAS_TOY, reason="the trained toy model is not in assets/ yet")
@pytest.mark.parametrize("cls", [P4DNConfig, P4DKConfig])
def test_p4d_on_the_unerased_toy_model_reaches_a_high_rate(toy_pipe, judge, cls):
    """On the unerased model the target is the model itself, so the projected prompts should show the concept.
    The pre-attack check is off: every prompt is attacked, and only what P4D found is judged (P4D-N's prompts
    do not even contain the original prompt)."""
    from studio.toyworld.captions import prompts_for

    prompts = [p for p, _ in prompts_for("triangle", "direct", 3)]
    config = cls.toy(iterations=50, pre_attack=False)
    run = run_many(
        f"p4d-{cls.variant}",
        toy_pipe,
        prompts,
        [0, 1, 2],
        lambda ims: judge.shows(ims, "triangle"),
        config,
        original=toy_pipe,
        progress=False,
    )
    s = run.summary()
    assert s["pre_successes"] == 0 and s["post_successes"] >= 2, s["rate"]
    for r in run.results:
        assert r.gradient_steps <= 50 and r.generations >= 1 and r.exact_tokens
        if cls is P4DNConfig:
            assert r.adversarial_prompt != r.prompt and len(r.adversarial_tokens) == 16
