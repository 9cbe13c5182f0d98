"""The toy world's renderer, captions, grammar and tokenizer."""

import numpy as np
import pytest

from studio.toyworld.captions import caption, prompts_for
from studio.toyworld.grammar import BACKGROUND_RGB, COLOURS, CONCEPTS, RGB, SHAPES, STYLES, concept
from studio.toyworld.render import render


def test_render_is_deterministic_and_seed_dependent():
    a = render(seed=3)
    b = render(seed=3)
    c = render(seed=4)
    assert np.array_equal(a.image, b.image) and a.labels == b.labels and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("shape", SHAPES)
def test_labels_are_respected_and_mask_marks_the_object(shape):
    for i, colour in enumerate(COLOURS):
        bg = ("light", "dark")[i % 2]
        r = render({"shape": shape, "colour": colour, "style": "solid", "background": bg}, seed=i)
        assert r.labels == {"shape": shape, "colour": colour, "style": "solid", "background": bg}
        assert r.image.shape == (32, 32, 3) and r.image.dtype == np.uint8
        assert 40 < r.mask.sum() < 32 * 32 * 0.8
        # inside the mask (away from edges) the pixels are the colour; far outside, the background
        inner = r.mask & np.roll(r.mask, 1, 0) & np.roll(r.mask, -1, 0) & np.roll(r.mask, 1, 1) & np.roll(r.mask, -1, 1)
        assert np.abs(r.image[inner].mean(0) - np.array(RGB[colour])).max() < 20
        outer = ~(r.mask | np.roll(r.mask, 1, 0) | np.roll(r.mask, -1, 0) | np.roll(r.mask, 1, 1) | np.roll(r.mask, -1, 1))
        assert np.abs(r.image[outer].mean(0) - np.array(BACKGROUND_RGB[bg])).max() < 10


def test_styles_differ_inside_the_object():
    # striped and dotted fills mix the colour with its tint: more variance inside the mask than solid
    spread = {}
    for style in STYLES:
        r = render({"shape": "square", "colour": "blue", "style": style, "background": "light"}, seed=1)
        spread[style] = r.image[r.mask].std(0).mean()
    assert spread["solid"] < 5 < spread["striped"] and spread["dotted"] > 5


def test_empty_image_and_position_varies():
    r = render({"shape": "none"}, seed=0)
    assert r.mask.sum() == 0 and r.labels["colour"] == "none"
    centres = {tuple(np.argwhere(render({"shape": "circle"}, seed=s).mask).mean(0).round()) for s in range(10)}
    assert len(centres) > 5


def test_unknown_labels_are_clear_errors():
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        render({"shape": "hexagon"}, seed=0)
    with pytest.raises(ValueError, match="unknown toy-world concept"):
        concept("hexagon")


def test_captions_and_prompt_sets_name_their_concepts():
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = render(rng=rng)
        text = caption(r.labels, rng)
        assert text and len(text.split()) < 20
    for name in ("triangle", "red", "striped"):
        c = CONCEPTS[name]
        for form, words in (("direct", (c.name,)), ("synonym", c.synonyms), ("alias", c.aliases)):
            prompts = prompts_for(name, form)
            assert len(prompts) >= 20
            for text, asked in prompts:
                assert asked[c.attribute] == name
                assert any(w in text for w in words), (form, text)
                if form != "direct":
                    assert f" {c.name} " not in f" {text} ", text


def test_tokenizer_pins_known_ids(toy_pipe):
    from transformers import CLIPTokenizer

    from studio.toyworld.train import TOKENIZER

    for tok in (CLIPTokenizer.from_pretrained(str(TOKENIZER)), toy_pipe.tokenizer):
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert len(tok) == 49408 and tok.model_max_length == 77
        assert tok("nudity").input_ids[1:-1] == [1156, 16436]  # two BPE tokens, as on SD


def test_prompt_sets_cover_every_value_of_the_grammar():
    from studio.toyworld.captions import article
    from studio.toyworld.grammar import ATTRIBUTES, ToyConcept

    assert isinstance(CONCEPTS["triangle"], ToyConcept)
    asked = [labels for _, labels in prompts_for("triangle", "direct")]
    for attribute in ("colour", "style", "background"):
        seen = {labels[attribute] for labels in asked if attribute in labels}
        assert seen == set(ATTRIBUTES[attribute]), attribute
    assert article("a orb on a dark background") == "an orb on a dark background"
