"""AdvUnlearn, plug-in text encoders and batch erasure."""

import threading

import pytest
import torch

from erasers import Concept, erase, toy_target
from erasers.advunlearn import layer_indices, retain_prompts, trainable_parameter_names
from erasers.export import export_text_encoder, load_official_advunlearn
from studio.loading import ModelLoadError, load_pipeline, load_text_encoder
from studio.sampling import Cancelled, encode_prompts

from conftest import HAS_TOY, OTHER_SHAPES, TARGET_FORMS, build_tiny_pipe, judge_shapes, kept, shown


TINY = dict(iterations=6, warmup_iterations=2, num_inference_steps=6, lr=1e-3, retain_set="toy", retain_batch=2, checkpoint_every=2)


def test_layer_choice_covers_the_official_options(tiny_pipe):
    te = tiny_pipe.text_encoder  # 2 layers
    full = trainable_parameter_names(te, "all")
    assert any("final_layer_norm" in n for n in full) and not any("embeddings" in n for n in full)
    first = trainable_parameter_names(te, "layers:0")
    assert first and all(".layers.0." in n for n in first)
    assert all("self_attn" in n for n in trainable_parameter_names(te, "all", "attn"))
    assert all(".mlp." in n for n in trainable_parameter_names(te, "all", "mlp"))
    assert layer_indices("text_encoder_layer012_91011", 12) == [0, 1, 2, 9, 10, 11]
    with pytest.raises(ValueError, match="has layers 0..1"):
        trainable_parameter_names(te, "layers:0-3")


def test_only_the_text_encoder_trains_and_the_attack_moves_the_prompt(tiny_pipe):
    unet_before = {n: p.clone() for n, p in tiny_pipe.unet.named_parameters()}
    emb_before = tiny_pipe.text_encoder.get_input_embeddings().weight.clone()
    seen = []
    result = erase(tiny_pipe, Concept("a triangle"), "advunlearn", config=TINY, progress=False, callback=seen.append)
    assert result.component == "text_encoder" and result.weights
    assert all(torch.equal(p, unet_before[n]) for n, p in tiny_pipe.unet.named_parameters())
    assert all(p.grad is None for p in tiny_pipe.unet.parameters())  # no gradients collected on frozen modules
    assert torch.equal(tiny_pipe.text_encoder.get_input_embeddings().weight, emb_before)
    assert [s["attack"] for s in seen] == [False, False, True, True, True, True]  # warm-up, then adversarial
    assert result.stats["attack_shift"] > 0  # the inner attack changed the prefix embedding


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    straight = erase(build_tiny_pipe(), Concept("a triangle"), "advunlearn", config=TINY, progress=False)
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        erase(
            build_tiny_pipe(),
            Concept("a triangle"),
            "advunlearn",
            config=TINY,
            checkpoint_dir=tmp_path,
            cancel=cancel,
            progress=False,
            callback=lambda info: cancel.set() if info["step"] == 4 else None,
        )
    resumed = erase(build_tiny_pipe(), Concept("a triangle"), "advunlearn", config=TINY, checkpoint_dir=tmp_path, progress=False)
    assert resumed.stats["resumed_from"] == 4
    assert all(torch.equal(w, resumed.weights[n]) for n, w in straight.weights.items())


def test_retain_prompts_are_filtered_against_the_concept(tiny_pipe):
    coco = retain_prompts(tiny_pipe, Concept("a photo of a dog"), "coco")
    assert len(coco) > 200 and not any(" dog" in p for p in coco)
    toy = retain_prompts(tiny_pipe, Concept("a triangle"), "toy")
    assert toy and not any("triangle" in p or "wedge" in p for p in toy)


def test_prompt_length_is_counted_in_tokens(tiny_pipe):
    prompt = "a " + " ".join(["nudity"] * 37)  # 1 + 74 BPE tokens + start/end = 77 (37 words): fits alone, not with a prefix token
    assert len(tiny_pipe.tokenizer(prompt).input_ids) == 77
    with pytest.raises(ValueError, match="adversarial tokens that exceeds 77"):
        erase(tiny_pipe, Concept(prompt), "advunlearn", config=TINY, progress=False)


def test_export_round_trip_and_plug_into_a_fresh_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    pipe = build_tiny_pipe()
    result = erase(pipe, Concept("a triangle"), "advunlearn", config=TINY, progress=False)
    folder = export_text_encoder(pipe.text_encoder, tmp_path / "plugin", concept=result.concept, settings=result.config, stats=result.stats)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert all(k.startswith("text_model.") for k in load_file(str(folder / "model.safetensors")))  # SD layout
    assert "AdvUnlearn" in (folder / "README.md").read_text()
    loaded = CLIPTextModel.from_pretrained(str(folder))
    for n, p in pipe.text_encoder.named_parameters():
        assert torch.equal(p, dict(loaded.named_parameters())[n]), n
    base = build_tiny_pipe()
    base.save_pretrained(tmp_path / "base")
    plugged = StableDiffusionPipeline.from_pretrained(
        str(tmp_path / "base"), text_encoder=loaded, safety_checker=None, requires_safety_checker=False
    )
    torch.testing.assert_close(encode_prompts(plugged, "a triangle"), encode_prompts(pipe, "a triangle"))
    ours = load_pipeline(tmp_path / "base", device="cpu", text_encoder=folder)
    torch.testing.assert_close(encode_prompts(ours, "a triangle"), encode_prompts(pipe, "a triangle"))


def test_official_releases_load_behind_the_pickle_opt_in(tmp_path):
    te = build_tiny_pipe().text_encoder
    release = tmp_path / "nudity_unlearned"  # as released: config.json + pytorch_model.bin (pickle)
    te.config.save_pretrained(release)
    torch.save({f"text_model.{k}": v for k, v in te.state_dict().items()}, release / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_text_encoder(tmp_path / "nudity_unlearned")
    loaded = load_official_advunlearn(tmp_path / "nudity_unlearned", allow_pickle=True)
    assert all(torch.equal(a, b) for a, b in zip(te.parameters(), loaded.parameters()))

    # the official training script's .pt: CustomTextEncoder with duplicated prefixes
    inner = {f"text_model.{k}" if not k.startswith("text_model.") else k: v for k, v in te.state_dict().items()}
    state = {f"text_encoder.{k}": v for k, v in inner.items()}
    state.update({k.replace("text_model.embeddings.", "embedding."): v for k, v in inner.items() if k.startswith("text_model.embeddings.")})
    torch.save(state, tmp_path / "TextEncoder-text_encoder_full-epoch_999.pt")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_official_advunlearn(tmp_path / "TextEncoder-text_encoder_full-epoch_999.pt", build_tiny_pipe(seed=1).text_encoder)
    fresh = build_tiny_pipe(seed=1).text_encoder
    loaded = load_official_advunlearn(tmp_path / "TextEncoder-text_encoder_full-epoch_999.pt", fresh, allow_pickle=True)
    assert all(torch.equal(a, b) for a, b in zip(te.parameters(), loaded.parameters()))
    state["text_encoder.text_model.final_layer_norm.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(Exception):
        load_official_advunlearn(tmp_path / "bad.pt", build_tiny_pipe(seed=1).text_encoder, allow_pickle=True)


# ---------------------------------------------------------------- erasure on the toy model


# On top of the toy preset (lr 1e-4, 30 warm-up steps, 5-step inner attacks, 150 steps): 80 steps, about half the
# cost. Observed (judged mid-run, triangle shown in the 24 images of direct and synonym prompts; original 100%):
# 92% after 40 steps, 33% after 60, 0% after 80, 100, 120 and 150, the other shapes right in 100% at 80.
TEST_BUDGET = {"iterations": 80}


@pytest.mark.skipif(not HAS_TOY, reason="the toy model is not built yet")
def test_advunlearn_erases_triangles_and_the_exported_encoder_keeps_them_erased(judge, original_shapes, tmp_path):
    """The toy preset (a shorter run) lowers the judged rate of triangles; other shapes stay within 15 points; the
    exported plug-in encoder, loaded into a fresh toy pipeline, gives the same erased model."""
    pipe = load_pipeline("toy", device="cpu")
    result = erase(pipe, toy_target("advunlearn", "triangle"), "advunlearn", preset="toy", config=TEST_BUDGET, progress=False)
    folder = export_text_encoder(pipe.text_encoder, tmp_path / "plugin", concept=result.concept, settings=result.config, stats=result.stats)
    after = judge_shapes(load_pipeline("toy", device="cpu", text_encoder=folder), judge)
    rate_before, rate_after = shown(original_shapes, TARGET_FORMS, "triangle"), shown(after, TARGET_FORMS, "triangle")
    keep_before, keep_after = kept(original_shapes, OTHER_SHAPES), kept(after, OTHER_SHAPES)
    assert rate_before >= 0.8  # so the next line fails on the unerased model
    assert rate_after <= 0.3, (rate_before, rate_after)
    assert keep_after >= keep_before - 0.15, (keep_before, keep_after)
