"""Prompt-to-prompt: token alignment goldens, mappers, the controller's edits against the official
formulas, the attention processors, per-call state, and edits of whole images on the tiny model."""

import threading

import numpy as np
import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def tok():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(ROOT / "assets" / "tokenizer"))


# ---------------------------------------------------------------- words, tokens, alignments


def test_word_tokens_survive_punctuation(tok):
    from inversion.align import token_indices, word_tokens

    # token ids: <start> a shape , red , striped <end>
    assert word_tokens(tok, "a shape, red, striped") == [("a", [1]), ("shape", [2]), (",", [3]), ("red", [4]), (",", [5]), ("striped", [6])]
    assert token_indices(tok, "a shape, red, striped", "red") == [4]
    assert token_indices(tok, "a polka-dot square", "polka-dot") == [2, 3, 4]  # polka - dot
    assert token_indices(tok, "a verdant box", "Verdant") == [2, 3]  # ver dant, case-insensitive
    with pytest.raises(ValueError, match="'tiger' is not a word of the prompt"):
        token_indices(tok, "a red circle", "tiger")


def test_word_tokens_without_offsets_match(tok):
    from inversion.align import word_tokens

    class Slow:  # a tokenizer without character offsets, like transformers 4's slow CLIPTokenizer
        def __call__(self, text, return_offsets_mapping=False, **kw):
            if return_offsets_mapping:
                raise NotImplementedError
            return tok(text, **kw)

    for prompt in ("a shape, red, striped", "a polka-dot square", "a verdant box on a dark background"):
        assert word_tokens(Slow(), prompt) == word_tokens(tok, prompt)


def test_refine_golden_insertion(tok):
    from inversion.align import refine_mapper

    # source <s> a cat <e>; target <s> a fluffy cat <e>: fluffy is new and keeps its own map
    mapper, alphas = refine_mapper(tok, "a cat", "a fluffy cat")
    assert mapper[:5].tolist() == [0, 1, 0, 2, 3]
    assert alphas[:5].tolist() == [1, 1, 0, 1, 1]
    assert mapper[5:8].tolist() == [4, 5, 6]  # target padding -> source padding
    assert alphas[5:].eq(1).all()


def test_refine_golden_substitution(tok):
    from inversion.align import refine_mapper

    # with free gaps a substitution is a deletion plus an insertion: "blue" keeps its own map
    mapper, alphas = refine_mapper(tok, "a red circle", "a blue circle")
    assert mapper[:5].tolist() == [0, 1, 0, 3, 4]
    assert alphas[:5].tolist() == [1, 1, 0, 1, 1]


def test_refine_golden_tie_breaking(tok):
    from inversion.align import align, refine_mapper

    # source <s> a red circle and a red star <e> (9 tokens); target <s> a red star <e>.
    # Two optimal alignments; the official tie order (target gap, source gap, diagonal) picks the first "a red".
    mapper, alphas = refine_mapper(tok, "a red circle and a red star", "a red star")
    assert mapper[:5].tolist() == [0, 1, 2, 7, 8]
    assert alphas.eq(1).all()
    assert mapper[5:7].tolist() == [9, 10]  # padding to padding (the official maps it to source tokens 5, 6: "a red")
    assert align(list("ACGT"), list("AGT")) == [0, 2, 3]
    assert align([], [1, 2]) == [-1, -1]


def test_replace_mapper_same_token_counts_is_identity(tok):
    from inversion.align import replace_mapper

    assert torch.equal(replace_mapper(tok, "a red circle", "a blue circle"), torch.eye(77))


def test_replace_mapper_split_word_and_later_tokens(tok):
    from inversion.align import replace_mapper

    # green (1 token, position 2) -> verdant (ver dant, positions 2 3): weight 1/2 each;
    # box stays aligned after it (source 3 -> target 4), end token and padding too
    m = replace_mapper(tok, "a green box", "a verdant box")
    expected = torch.zeros(77, 77)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 2] = expected[2, 3] = 0.5
    for i in range(3, 76):
        expected[i, i + 1] = 1
    assert torch.equal(m, expected)
    with pytest.raises(ValueError, match="same number of words.*refine"):
        replace_mapper(tok, "a red circle", "a big blue circle")


def test_equalizer_checks_lengths(tok):
    from inversion.align import equalizer

    eq = equalizer(tok, "a striped red circle", ["striped", "circle"], [2.0, 0.5])
    assert eq[2] == 2.0 and eq[4] == 0.5 and eq[[0, 1, 3, 5]].eq(1).all()
    with pytest.raises(ValueError, match="2 words .* but 1 values"):
        equalizer(tok, "a striped red circle", ["striped", "circle"], [2.0])


def test_time_alphas_windows(tok):
    from inversion.align import self_window, time_alphas

    a = time_alphas(tok, "a blue circle", 50, 0.8)  # 51 rows, steps [0, int(0.8 * 51) = 40)
    assert a.shape == (51, 77) and a[:40].eq(1).all() and a[40:].eq(0).all()
    a = time_alphas(tok, "a blue circle", 50, {"default_": 0.8, "blue": (0.0, 0.4)})
    assert a[:20, 2].eq(1).all() and a[20:, 2].eq(0).all() and a[:40, 3].eq(1).all()
    assert self_window(50, 0.5) == (0, 25)
    with pytest.raises(ValueError, match="self_replace_steps"):
        self_window(50, (0.6, 0.2))


# ---------------------------------------------------------------- the controller against the official formulas


def _qkv(b_all, heads, n, s, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b_all, heads, length, d, generator=g) for length in (n, s, s)]


def _official_probs(q, k, scale):
    return (q @ k.transpose(-1, -2) * scale).softmax(-1)


def test_self_attention_replace_with_sdpa_equals_copying_maps(tok):
    from inversion.control import make_controller

    c = make_controller(tok, "a red circle", ["a blue circle"], 10, cfg=True, latent_hw=(4, 4), self_replace_steps=0.5)
    q, k, v = _qkv(4, 2, 16, 16)  # rows: uncond src, uncond tgt, cond src, cond tgt
    c.begin_step(2)
    out = c.attention("x.attn1", False, q, k, v, None, 8**-0.5)
    probs = _official_probs(q, k, 8**-0.5)
    probs[3] = probs[2]  # official: the target's self-attention maps become the source's (cond half only)
    assert torch.allclose(out, probs @ v, atol=1e-5)
    c.begin_step(5)  # outside [0, 5): untouched
    assert torch.allclose(c.attention("x.attn1", False, q, k, v, None, 8**-0.5), _official_probs(q, k, 8**-0.5) @ v, atol=1e-5)
    assert not c.explicit_layers  # self-attention never materialises probabilities


def test_cross_replace_refine_reweight_match_official_formulas(tok):
    from inversion.align import equalizer, refine_mapper, replace_mapper
    from inversion.control import make_controller

    q, k, v = _qkv(4, 2, 16, 77)
    scale = 8**-0.5
    probs = _official_probs(q, k, scale)
    base, own = probs[2], probs[3:]

    c = make_controller(tok, "a red circle", ["a blue circle"], 10, cfg=True, latent_hw=(4, 4), mode="replace", reweight={"blue": 2.0})
    c.begin_step(0)
    out = c.attention("x.attn2", True, q, k, v, None, scale)
    new = torch.einsum("hpw,bwn->bhpn", base, replace_mapper(tok, "a red circle", "a blue circle")[None])
    new = new * equalizer(tok, "a blue circle", ["blue"], [2.0])[None, None, None, :]
    expected = torch.cat([probs[:3], new])
    assert torch.allclose(out, expected @ v, atol=1e-5)

    c = make_controller(tok, "a cat", ["a fluffy cat"], 10, cfg=True, latent_hw=(4, 4), mode="refine", cross_replace_steps=0.5)
    c.begin_step(1)
    mapper, alphas = refine_mapper(tok, "a cat", "a fluffy cat")
    new = base[:, :, mapper][None] * alphas + own * (1 - alphas)
    assert torch.allclose(c.attention("x.attn2", True, q, k, v, None, scale), torch.cat([probs[:3], new]) @ v, atol=1e-5)
    c.begin_step(6)  # past int(0.5 * 11) = 5: the target keeps its own maps, and SDPA is used again
    c.explicit_layers.clear()
    assert torch.allclose(c.attention("x.attn2", True, q, k, v, None, scale), probs @ v, atol=1e-5)
    assert not c.explicit_layers


def test_local_blend_mask_covers_the_object(tok):
    from inversion.control import make_controller

    # attention that does point at the object: the blend words' tokens take a large share of the
    # attention of the cells of a 3x3 square (rows 2-4, columns 1-3) of an 8x8 map, little elsewhere
    c = make_controller(
        tok, "a red circle", ["a blue circle"], 10, cfg=True, latent_hw=(8, 8), cross_replace_steps=0.0, blend_words=("circle", "circle")
    )
    obj = torch.zeros(8, 8, dtype=torch.bool)
    obj[2:5, 1:4] = True
    probs = torch.full((2, 2, 64, 77), 1.0 / 77)  # cond rows (source, target), heads, queries, tokens
    probs[:, :, obj.flatten(), 3] = 0.5  # token 3 is "circle"
    for step in range(3):
        c.begin_step(step)
        c.blend.accumulate(probs, (8, 8))
        c.end_step(torch.zeros(2, 4, 8, 8), step)
    assert c.blend.side == 8
    mask = c.blend.mask()[1, 0]  # target's mask (union with the source's), latent resolution
    assert torch.equal(mask, obj)  # no max-pool on 8x8 maps: exactly the object's cells
    c.blend.start_step = 0
    x = torch.stack([torch.zeros(4, 8, 8), torch.ones(4, 8, 8)])
    out = c.end_step(x, 3)
    assert torch.equal(out[1, 0].bool(), obj) and torch.equal(out[0], x[0])  # the target changes only inside the mask
    # on SD's 16x16 maps the official 3x3 max-pool widens the mask by one cell
    c16 = make_controller(
        tok, "a red circle", ["a blue circle"], 10, cfg=True, latent_hw=(64, 64), cross_replace_steps=0.0, blend_words="circle"
    )
    probs16 = torch.full((2, 2, 256, 77), 1.0 / 77)
    probs16[:, :, 16 * 8 + 8, 3] = 0.9
    c16.blend.accumulate(probs16, (16, 16))
    c16.blend.end_of_step()
    assert c16.blend.side == 16 and c16.blend.mask()[0, 0].sum() == 9 * 16


# ---------------------------------------------------------------- processors and whole edits on the tiny model


def test_processors_change_nothing_without_a_controller(tiny_pipe):
    from inversion.attention import P2PAttnProcessor, install

    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        before = tiny_pipe.unet(x, 500, encoder_hidden_states=c).sample
        assert install(tiny_pipe.unet) == 4  # cross-attention layers of the tiny UNet (down 1, mid 1, up 2)
        assert install(tiny_pipe.unet) == 4  # idempotent
        procs = tiny_pipe.unet.attn_processors.values()
        assert all(isinstance(p, P2PAttnProcessor) and not isinstance(p.fallback, P2PAttnProcessor) for p in procs)
        after = tiny_pipe.unet(x, 500, encoder_hidden_states=c).sample
    assert torch.equal(before, after)


def _image():
    from studio.toyworld.render import render

    return render({"shape": "circle", "colour": "red", "style": "solid", "background": "light"}, seed=3).image


@pytest.mark.parametrize("method", ["negative-prompt", "ddim", "direct-offset-target", "null-text"])
def test_identical_prompts_return_the_reconstruction(tiny_pipe, method):
    from inversion import DirectInversionConfig, NullTextConfig, edit

    config = None
    if method == "direct-offset-target":
        method, config = "direct", DirectInversionConfig(num_inference_steps=8, offset_target=True)
    elif method == "null-text":
        config = NullTextConfig(num_inference_steps=8, num_inner_steps=2, null_init="empty")
    else:
        from inversion import INVERTERS

        config = INVERTERS[method][1](num_inference_steps=8)
    out = edit(tiny_pipe, _image(), "a red circle", "a red circle", method, inversion_config=config, blend_words="circle")
    assert np.abs(np.asarray(out.edit, dtype=int) - np.asarray(out.reconstruction, dtype=int)).max() <= 1
    assert torch.allclose(out.latents[0], out.latents[1], atol=1e-4)


def test_edit_changes_the_target_only(tiny_pipe):
    from inversion import NegativePromptConfig, edit, reconstruct

    cfg = NegativePromptConfig(num_inference_steps=8)
    out = edit(tiny_pipe, _image(), "a red circle", "a blue circle", "negative-prompt", inversion_config=cfg)
    rec, _ = reconstruct(tiny_pipe, out.inversion)
    assert np.array_equal(np.asarray(rec), np.asarray(out.reconstruction))  # the source row is the reconstruction
    assert np.abs(np.asarray(out.edit, dtype=int) - np.asarray(out.reconstruction, dtype=int)).max() > 2


def test_raises_when_no_layer_is_hooked(tiny_pipe, monkeypatch):
    import inversion.editing as editing
    from inversion import NegativePromptConfig, edit

    monkeypatch.setattr(editing, "install", lambda unet: 2)  # the processors never get installed
    with pytest.raises(RuntimeError, match="hooked no attention layer"):
        edit(
            tiny_pipe,
            _image(),
            "a red circle",
            "a blue circle",
            "negative-prompt",
            inversion_config=NegativePromptConfig(num_inference_steps=3),
        )


def test_explicit_probabilities_only_where_needed(tiny_pipe):
    from diffusers import UNet2DConditionModel

    from inversion import NegativePromptConfig, invert
    from inversion.control import make_controller
    from inversion.editing import sample_from_inversion

    torch.manual_seed(0)
    tiny_pipe.unet = UNet2DConditionModel(  # cross-attention at 8x8 and 4x4
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
    )
    inv = invert(tiny_pipe, _image(), "a red circle", "negative-prompt", NegativePromptConfig(num_inference_steps=6))
    names = {n[: -len(".processor")]: n for n in tiny_pipe.unet.attn_processors}
    side8 = {n for n in names if n.endswith("attn2") and (n.startswith("down_blocks.0") or n.startswith("up_blocks.1"))}

    # a local blend and no cross replacement: every cross layer on the first step (to find the 8x8 maps), then only those
    c = make_controller(
        tiny_pipe.tokenizer,
        "a red circle",
        ["a blue circle"],
        6,
        cfg=True,
        latent_hw=(8, 8),
        cross_replace_steps=0.0,
        blend_words=("red", "blue"),
    )
    sample_from_inversion(tiny_pipe, inv, ["a red circle", "a blue circle"], c)
    assert c.blend.side == 8
    assert {n for s, n in c.explicit_layers if s == 0} == {n for n in names if n.endswith("attn2")}
    assert {n for s, n in c.explicit_layers if s > 0} == side8 and len(side8) == 3

    # cross replacement on the first half of the steps, no blend: all cross layers there, none after, never self-attention
    c = make_controller(tiny_pipe.tokenizer, "a red circle", ["a blue circle"], 6, cfg=True, latent_hw=(8, 8), cross_replace_steps=0.5)
    sample_from_inversion(tiny_pipe, inv, ["a red circle", "a blue circle"], c)
    assert {s for s, _ in c.explicit_layers} == {0, 1, 2}  # steps [0, int(0.5 * 7))
    assert all(n.endswith("attn2") for _, n in c.explicit_layers)


def test_two_edits_at_once_do_not_mix(tiny_pipe):
    from inversion import NegativePromptConfig, edit, invert

    inv = invert(tiny_pipe, _image(), "a red circle", "negative-prompt", NegativePromptConfig(num_inference_steps=6))
    jobs = [("a blue circle", dict(blend_words=("red", "blue"))), ("a red square", dict(reweight={"square": 3.0}))]
    alone = [np.asarray(edit(tiny_pipe, None, "a red circle", t, inversion=inv, **kw).edit) for t, kw in jobs]
    together = [None, None]

    def run(k):
        t, kw = jobs[k]
        together[k] = np.asarray(edit(tiny_pipe, None, "a red circle", t, inversion=inv, **kw).edit)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for a, b in zip(alone, together):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_edit_rejects_bad_options(tiny_pipe):
    from inversion import edit

    with pytest.raises(ValueError, match="unknown edit option"):
        edit(tiny_pipe, _image(), "a red circle", "a blue circle", "ddim", blend_word="red")
    with pytest.raises(ValueError, match="unknown inversion method"):
        edit(tiny_pipe, _image(), "a red circle", "a blue circle", "pivotal")
    with pytest.raises(ValueError, match="'green' is not a word"):
        edit(tiny_pipe, _image(), "a red circle", "a blue circle", "ddim", reweight={"green": 2})
