"""Inversion and editing on the trained toy model: the assertions that need a model that knows the
toy world (skipped until assets/toy-model exists). Rendered images are real images for the model."""

import pytest

from studio.loading import TOY_MODEL


pytestmark = pytest.mark.skipif(not (TOY_MODEL / "model_index.json").is_file(), reason=f"the toy model is not trained yet ({TOY_MODEL})")

PROMPT = "a solid red circle on a light background"
LABELS = {"shape": "circle", "colour": "red", "style": "solid", "background": "light"}


@pytest.fixture(autouse=True)
def restore_processors(toy_pipe):
    """Edits leave prompt-to-prompt's processors on the UNet (inert without a controller); other tests share this pipeline."""
    before = dict(toy_pipe.unet.attn_processors)
    yield
    toy_pipe.unet.set_attn_processor(before)


@pytest.fixture(scope="module")
def rendered():
    from studio.toyworld.render import render

    return render(LABELS, seed=11)


@pytest.fixture(scope="module")
def ceiling(toy_pipe, rendered):
    from PIL import Image

    from studio.latents import decode as decode_latents, encode as encode_image, to_pil
    from studio.images import psnr

    z0 = encode_image(toy_pipe, Image.fromarray(rendered.image))
    return psnr(to_pil(decode_latents(toy_pipe, z0))[0], rendered.image)


def test_ddim_round_trip_at_w1_reconstructs_closely(toy_pipe, rendered, ceiling):
    from inversion import DDIMInversionConfig, InversionResult, invert, reconstruct
    from studio.images import psnr

    inv = invert(toy_pipe, rendered.image, PROMPT, "ddim", DDIMInversionConfig())
    w1 = InversionResult(**{**inv.__dict__, "guidance_scale": 1.0})
    image, _ = reconstruct(toy_pipe, w1)
    assert psnr(image, rendered.image) > ceiling - 1.0


def test_null_text_beats_ddim_at_7_5_and_nears_the_vae_ceiling(toy_pipe, rendered, ceiling):
    from inversion import invert, reconstruct
    from studio.images import psnr

    ddim, _ = reconstruct(toy_pipe, invert(toy_pipe, rendered.image, PROMPT, "ddim"))
    null_text, _ = reconstruct(toy_pipe, invert(toy_pipe, rendered.image, PROMPT, "null-text"))
    p_ddim, p_null = psnr(ddim, rendered.image), psnr(null_text, rendered.image)
    assert p_null > p_ddim + 3.0, (p_null, p_ddim)
    assert p_null > ceiling - 0.5, (p_null, ceiling)


def test_colour_edit_changes_the_colour_and_keeps_the_rest(toy_pipe, judge, rendered):
    from inversion import edit

    out = edit(toy_pipe, rendered.image, PROMPT, PROMPT.replace("red", "blue"), "direct")
    verdict = judge.predict([out.edit])[0]
    assert verdict == {**LABELS, "colour": "blue"}, verdict
    assert judge.predict([out.reconstruction])[0] == LABELS
