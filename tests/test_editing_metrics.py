"""The editing table's PIE-Bench-style metrics (benchmarks/editing_table.py) on hand-made pairs, and
the source branch of a prompt-to-prompt edit from null-text embeddings against the inversion alone."""

import numpy as np
import pytest
import torch
from conftest import load_benchmark

T = load_benchmark("editing_table")


def _pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:24] = True  # the "object"
    b = a.copy()
    b[mask] = 255 - b[mask]  # everything inside changes, nothing outside
    return a, b, mask


def test_background_metric_is_perfect_when_only_the_object_changed():
    a, b, mask = _pair()
    m = T.region_metrics(b, a, ~mask)
    assert m["psnr"] == float("inf") and m["mse"] == 0.0 and m["ssim"] == pytest.approx(1.0)
    inside = T.region_metrics(b, a, mask)  # the region that did change is measured as changed
    assert inside["psnr"] < 10 and inside["ssim"] < 0.9


def test_background_metric_drops_when_the_outside_changes():
    a, b, mask = _pair()
    small, large = b.copy(), b.copy()
    v = int(small[0, 0, 0])
    small[0, 0, 0] = v + 40 if v < 128 else v - 40  # one channel of one pixel outside
    large[~mask] = np.clip(large[~mask].astype(int) + 30, 0, 255).astype(np.uint8)
    m_small, m_large = T.region_metrics(small, a, ~mask), T.region_metrics(large, a, ~mask)
    assert np.isfinite(m_small["psnr"]) and m_small["mse"] > 0
    assert m_large["psnr"] < m_small["psnr"] and m_large["mse"] > m_small["mse"]
    assert m_large["ssim"] < m_small["ssim"] <= 1.0
    # MSE is over the region's pixels only, in [0, 1] units: one pixel of 40 levels in one channel
    assert m_small["mse"] == pytest.approx((40 / 255) ** 2 / (3 * (~mask).sum()), rel=1e-6)


def test_region_metrics_reject_bad_shapes_and_say_nan_for_no_region():
    a, b, mask = _pair()
    with pytest.raises(ValueError, match="same height and width"):
        T.region_metrics(a, b[:16], mask)
    assert np.isnan(T.region_metrics(a, b, np.zeros_like(mask))["psnr"])


def test_ideal_edit_keeps_the_geometry_and_changes_the_attribute():
    item = T.dataset(1, seed=7)[0]
    colour = T.swap(item["labels"], "colour", 0)
    ideal = T.ideal_edit(item, "colour", colour)
    assert ideal.labels == {**item["labels"], "colour": colour}
    assert np.array_equal(ideal.mask, item["mask"])  # same place and size
    near = torch.nn.functional.max_pool2d(torch.from_numpy(item["mask"]).float()[None, None], 3, 1, 1)[0, 0].bool().numpy()
    assert np.array_equal(ideal.image[~near], item["image"][~near])  # same background, to the noise (edge pixels are antialiased)
    assert not np.array_equal(ideal.image[item["mask"]], item["image"][item["mask"]])
    shape = T.swap(item["labels"], "shape", 0)
    assert not np.array_equal(T.ideal_edit(item, "shape", shape).mask, item["mask"])


# ---------------------------------------------------------------- the source branch of a P2P edit from null-text embeddings


@pytest.mark.parametrize("target_null", ["shared", "empty"])
def test_source_branch_of_a_null_text_edit_reconstructs_as_the_inversion(tiny_pipe, target_null):
    """Tolerance: 0.05 dB of the inversion's own PSNR (the issue's bar is 0.5 dB); observed: identical images."""
    from inversion import NullTextConfig, edit, invert, reconstruct
    from studio.images import psnr
    from studio.toyworld.render import render

    image = render({"shape": "circle", "colour": "red", "style": "solid", "background": "light"}, seed=3).image
    inv = invert(tiny_pipe, image, "a red circle", "null-text", NullTextConfig(num_inference_steps=8, num_inner_steps=3, null_init="empty"))
    assert inv.null_embeddings.std(0).abs().max() > 0  # the embeddings differ per step, so a wrong order would show
    alone, alone_latent = reconstruct(tiny_pipe, inv)
    out = edit(tiny_pipe, None, "a red circle", ["a blue circle", "a red square"], inversion=inv, target_null=target_null)
    assert abs(psnr(out.reconstruction, image) - psnr(alone, image)) <= 0.05
    # batched with the targets vs alone: float reductions differ with the thread count (~1e-4 on 2 threads);
    # a wrong null per step or a controller touching the source row moves latents by orders more
    assert torch.allclose(out.latents[0], alone_latent[0], atol=1e-3)
    assert np.abs(np.asarray(out.edit, dtype=int) - np.asarray(out.reconstruction, dtype=int)).max() > 2  # and the target did change


def test_target_null_empty_gives_the_targets_the_empty_prompt(tiny_pipe):
    """target_null="empty": the source row keeps its optimised embedding, each target row gets the "" embedding;
    so without a controller a target row is plain CFG sampling from z*_T, the same as DDIM's."""
    from inversion import InversionResult, NullTextConfig, invert
    from inversion.editing import sample_from_inversion
    from studio.toyworld.render import render

    image = render({"shape": "circle", "colour": "red", "style": "solid", "background": "light"}, seed=3).image
    inv = invert(tiny_pipe, image, "a red circle", "null-text", NullTextConfig(num_inference_steps=6, num_inner_steps=2, null_init="empty"))
    prompts = ["a red circle", "a blue circle"]
    ours, _ = sample_from_inversion(tiny_pipe, inv, prompts, None, target_null="empty")
    shared, _ = sample_from_inversion(tiny_pipe, inv, prompts, None, target_null="shared")
    ddim = InversionResult(**{**inv.__dict__, "method": "ddim", "null_embeddings": None})
    plain, _ = sample_from_inversion(tiny_pipe, ddim, prompts, None)
    assert torch.allclose(ours[1], plain[1], atol=1e-5)
    assert torch.allclose(ours[0], shared[0], atol=1e-5)  # the source row is untouched
    assert not torch.allclose(shared[1], plain[1], atol=1e-3)
    with pytest.raises(ValueError, match="unknown target_null"):
        sample_from_inversion(tiny_pipe, inv, prompts, None, target_null="source")


def test_the_tables_official_null_text_loop_runs(tiny_pipe):
    """The table's plain copy of the notebook's loop (its reference for speed and PSNR) imported a helper that
    no longer exists (`inversion.common.model_resolution`) and failed before it inverted anything."""
    from studio.toyworld.render import render

    image = render({"shape": "circle", "colour": "red", "style": "solid", "background": "light"}, seed=3).image
    from PIL import Image

    inv = T.official_null_text(tiny_pipe, Image.fromarray(image), "a red circle", steps=3, inner=2)
    assert inv.null_embeddings.shape[0] == 3 and inv.resolution == 32


# ---------------------------------------------------------------- erase, then edit: what the judge saw, counted


def test_erase_edit_rates_count_the_judged_outcomes():
    labels = {"shape": "triangle", "colour": "blue", "style": "solid", "background": "light"}

    def row(square_shape, red_colour, red_shape, source_shape="triangle", square_style="solid"):
        return (
            {
                "source_row_psnr": 30.0,
                "source_verdict": {**labels, "shape": source_shape},
                "edits": {
                    "square": {"verdict": {**labels, "shape": square_shape, "style": square_style}},
                    "red triangle": {"verdict": {**labels, "colour": red_colour, "shape": red_shape}},
                },
            },
            labels,
        )

    rows = [
        row("square", "red", "triangle"),  # both edits as asked
        row("square", "red", "circle", square_style="striped"),  # square but the style changed; red, triangle lost
        row("triangle", "blue", "triangle", source_shape="none"),  # nothing changed; the reconstruction lost the triangle
    ]
    r = T._erase_edit_rates(rows)
    assert (r["square_changed_and_kept"]["k"], r["square_changed_and_kept"]["n"]) == (1, 3)
    assert r["square_still_triangle"]["k"] == 1 and r["square_shape"] == {"square": 2, "triangle": 1}
    assert r["red_changed_and_kept"]["k"] == 1 and r["red_is_red"]["k"] == 2  # red but not a triangle is not "kept"
    assert r["red_shows_triangle"]["k"] == 2 and r["red_shape"] == {"circle": 1, "triangle": 2}
    assert r["source_shows_triangle"]["k"] == 2 and r["source_all_four"]["k"] == 2
