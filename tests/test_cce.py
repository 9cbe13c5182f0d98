"""CCE (concept inversion): the token injection, only the new row trains, the pipeline is unchanged, cancel,
bad settings, and the learned token on the unerased toy model."""

import threading

import numpy as np
import pytest
import torch
from conftest import HAS_TOY, build_tiny_pipe

from erasers.attacks import ATTACKS, make_config, run_many
from erasers.attacks.cce import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    CCEConfig,
    concept_renders,
    encode_with_token,
    initializer_embedding,
    learn_token_embedding,
    replace_words,
    token_input_ids,
)
from studio.progress import is_event
from studio.sampling import Cancelled, encode_prompts

NEVER = lambda images: np.zeros(len(images), dtype=bool)
TINY = {
    "steps": 3,
    "batch_size": 2,
    "gradient_accumulation_steps": 2,
    "num_images": 2,
    "image_steps": 2,
    "num_inference_steps": 2,
    "lr": 5e-2,
}
PROMPTS = ["a red triangle", "a striped blue triangle on a dark background"]


def state(pipe) -> dict:
    return {f"{m}.{k}": v.clone() for m in ("unet", "text_encoder", "vae") for k, v in getattr(pipe, m).state_dict().items()}


def test_official_templates_and_defaults():
    assert len(OBJECT_TEMPLATES) == 27 and len(STYLE_TEMPLATES) == 19
    assert all(t.count("{}") == 1 for t in OBJECT_TEMPLATES + STYLE_TEMPLATES)
    c = CCEConfig()
    assert (c.num_images, c.steps, c.batch_size, c.gradient_accumulation_steps) == (25, 5000, 4, 4)
    assert c.effective_lr == pytest.approx(0.08)  # 5e-3 x 4 x 4, the released train.sh's hidden scaling
    assert CCEConfig.first_commit().effective_lr == pytest.approx(0.02)
    assert CCEConfig(scale_lr=False).effective_lr == 5e-3


def test_token_encoding_equals_the_word_in_its_place():
    pipe = build_tiny_pipe()
    tok, te = pipe.tokenizer, pipe.text_encoder
    (tid,) = tok("triangle", add_special_tokens=False).input_ids
    row = te.get_input_embeddings().weight[tid]
    with torch.no_grad():
        got = encode_with_token(te, tok, ["a red <concept>", "<concept>, a blue <concept> on a dark background"], row)
        want = encode_prompts(pipe, ["a red triangle", "triangle, a blue triangle on a dark background"])
        other = encode_with_token(te, tok, ["a red <concept>"], te.get_input_embeddings().weight[tid + 1])
    assert torch.equal(got, want)
    assert not torch.equal(other, want[:1])
    ids, mask = token_input_ids(tok, ["a red <concept>"])
    assert mask.sum() == 1 and ids[0, mask[0]].item() == tok.bos_token_id
    assert not te.get_input_embeddings()._forward_hooks  # the hook lived for the call only
    with pytest.raises(ValueError, match="placeholder"):
        encode_with_token(te, tok, ["a red triangle"], row)


def test_replace_words_whole_words_longest_first():
    assert replace_words("a red plus sign", ("plus sign", "plus"), "<c>") == "a red <c>"
    assert replace_words("a wedge, a triangle", ("triangle", "wedge"), "<c>") == "a <c>, a <c>"
    assert replace_words("a triangles", ("triangle",), "<c>") is None


def test_only_the_new_row_trains_and_the_pipeline_is_unchanged():
    erased, original = build_tiny_pipe(0), build_tiny_pipe(1)
    erased.unet.requires_grad_(True)  # an eraser may leave flags on: they come back as they were
    before, flags = state(erased), {n: p.requires_grad for n, p in erased.unet.named_parameters()}
    events = []
    run = run_many(
        "cce", erased, PROMPTS, [0, 1], NEVER, TINY, original=original, concept="triangle", callback=events.append, progress=False
    )
    after = state(erased)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for m in (erased.unet, erased.text_encoder) for p in m.parameters())
    assert flags == {n: p.requires_grad for n, p in erased.unet.named_parameters()}
    assert len(erased.tokenizer) == 49408 and erased.text_encoder.get_input_embeddings().weight.shape[0] == 49408
    learned = torch.tensor(run.artifacts["embedding"])
    init = initializer_embedding(erased.text_encoder, erased.tokenizer, "object")
    assert not torch.allclose(learned, init, atol=1e-5)  # the new row moved
    assert len(run.results) == 2 and all(r.adversarial_prompt.count("<concept>") == 1 for r in run.results)
    assert run.setup_unet_evals == 3 * 2 * 2 + 2 * 2 * 2  # inversion + drawing 2 images (2 steps, guided)
    assert run.summary()["n"] == 2 and run.artifacts["steps"] == 3 and run.artifacts["images"]["count"] == 2
    assert all(is_event(e) and e["stage"] == "cce" for e in events)
    assert [e["step"] for e in events if e.get("phase") == "train"] == [1, 2, 3]


def test_the_token_goes_through_the_pipelines_own_text_encoder():
    """A text-encoder eraser (AdvUnlearn) changes what the same embedding means: the learning sees it."""
    a, b = build_tiny_pipe(0), build_tiny_pipe(0)
    with torch.no_grad():
        for name, p in b.text_encoder.named_parameters():
            if "embeddings" not in name:  # the transformer, not the token table (as AdvUnlearn trains it)
                p.add_(0.05 * torch.randn_like(p))
    images = torch.rand(2, 3, 32, 32)
    cfg = CCEConfig(**{k: v for k, v in TINY.items() if k in ("steps", "batch_size", "lr")})
    ea, _ = learn_token_embedding(a, images, OBJECT_TEMPLATES, cfg)
    ea2, _ = learn_token_embedding(a, images, OBJECT_TEMPLATES, cfg)
    eb, _ = learn_token_embedding(b, images, OBJECT_TEMPLATES, cfg)
    assert torch.equal(ea, ea2)  # seeded: the same run gives the same embedding
    assert not torch.allclose(ea, eb)


def test_cancel_stops_the_inversion_and_leaves_the_pipeline():
    pipe = build_tiny_pipe()
    before = state(pipe)
    cancel = threading.Event()
    stop = lambda info: cancel.set() if info.get("phase") == "train" and info["step"] == 1 else None
    with pytest.raises(Cancelled):
        run_many(
            "cce",
            pipe,
            PROMPTS,
            0,
            NEVER,
            {**TINY, "steps": 50},
            original=pipe,
            concept="triangle",
            callback=stop,
            cancel=cancel,
            progress=False,
        )
    assert all(torch.equal(v, state(pipe)[k]) for k, v in before.items())


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="steps must be"):
        make_config("cce", {"steps": 0})
    with pytest.raises(ValueError, match="templates"):
        CCEConfig(templates="painting")
    with pytest.raises(ValueError, match="images"):
        CCEConfig(images="web")
    with pytest.raises(ValueError, match="has no field"):
        make_config("cce", {"budget": 5})
    pipe = build_tiny_pipe()
    with pytest.raises(ValueError, match="original"):
        run_many("cce", pipe, PROMPTS, 0, NEVER, TINY, concept="triangle")
    with pytest.raises(ValueError, match="single token"):
        learn_token_embedding(pipe, torch.rand(1, 3, 32, 32), OBJECT_TEMPLATES, CCEConfig(initializer="five-pointed"))
    with pytest.raises(ValueError, match="does not name the concept"):
        run_many("cce", pipe, ["a red square"], 0, NEVER, TINY, original=pipe, concept="triangle")
    with pytest.raises(ValueError, match="resolution"):
        learn_token_embedding(pipe, torch.rand(1, 3, 64, 64), OBJECT_TEMPLATES, CCEConfig(steps=1))
    assert ATTACKS["cce"].unit == "concept" and ATTACKS["cce"].needs_original
    assert ATTACKS["cce"].cost(CCEConfig()) == 5000 * 16 + 25 * 50 * 2


def test_renders_show_the_concept_with_captions_that_name_it():
    images, captions = concept_renders("triangle", 5, seed=0)
    assert images.shape == (5, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert all(replace_words(c, ("triangle", "wedge", "trigon"), "{}") for c in captions)
    with pytest.raises(ValueError, match="toy-world"):
        concept_renders("light", 2)


@pytest.mark.skipif(not HAS_TOY, reason="the trained toy model is not in assets/")
def test_learned_token_on_the_unerased_toy_model_shows_the_concept(toy_pipe, judge):
    """On the unerased toy model a token learned from 8 renders of triangles, in place of the word, draws triangles
    (a short budget: 40 steps of 4). The untrained start ("shape"'s embedding in the same place) draws a triangle
    in 1 of these 8 pairs, so the bar is the learning's."""
    from studio.toyworld.captions import prompts_for

    prompts = [p for p, _ in prompts_for("triangle", "direct", 8)]
    cfg = CCEConfig.toy(images="render", num_images=8, steps=40)
    run = run_many(
        "cce",
        toy_pipe,
        prompts,
        list(range(8)),
        lambda im: judge.shows(im, "triangle"),
        cfg,
        original=toy_pipe,
        concept="triangle",
        progress=False,
    )
    assert run.artifacts["token_successes"] >= 7, run.summary()
    assert run.summary()["asr"] >= 7 / 8
