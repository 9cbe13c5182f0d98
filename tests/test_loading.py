"""Loading pipelines: the toy model, save/load round trips, and clear errors for bad input."""

import pytest
import torch

from studio.loading import ModelLoadError, load_pipeline
from studio.sampling import check_prompt, sample


def test_toy_model_loads_as_a_standard_sd_pipeline(toy_pipe):
    from diffusers import StableDiffusionPipeline

    from studio.loading import TOY_MODEL

    assert isinstance(toy_pipe, StableDiffusionPipeline)
    assert toy_pipe.unet.dtype == torch.float32 and toy_pipe.device.type == "cpu"
    plain = StableDiffusionPipeline.from_pretrained(str(TOY_MODEL), safety_checker=None, requires_safety_checker=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.unet.state_dict().values(), toy_pipe.unet.state_dict().values()))


def test_save_load_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    assert list((tmp_path / "m" / "unet").glob("*.safetensors"))
    loaded = load_pipeline(tmp_path / "m", device="cpu")
    a = sample(tiny_pipe, "a red triangle", seed=0, num_inference_steps=3, output_type="pt").images
    b = sample(loaded, "a red triangle", seed=0, num_inference_steps=3, output_type="pt").images
    assert torch.equal(a, b)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "nope", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty", device="cpu")


def test_offline_hub_id_says_so_and_suggests_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline.*local folder") as err:
        load_pipeline("CompVis/stable-diffusion-v1-4", device="cpu")
    assert "`hf download CompVis/stable-diffusion-v1-4 --local-dir <folder>`" in str(err.value) and "huggingface-cli" not in str(err.value)


def test_pickle_weights_need_an_explicit_opt_in(tiny_pipe, tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_pipeline(tmp_path / "model.ckpt", device="cpu")
    tiny_pipe.save_pretrained(tmp_path / "m", safe_serialization=False)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        load_pipeline(tmp_path / "m", device="cpu")
    loaded = load_pipeline(tmp_path / "m", device="cpu", allow_pickle=True)
    assert torch.equal(next(iter(loaded.unet.parameters())), next(iter(tiny_pipe.unet.parameters())))


def test_prompt_over_77_tokens_is_a_clear_error(tiny_pipe):
    long = "a red triangle " * 30
    with pytest.raises(ValueError, match=r"prompt has \d+ tokens; CLIP takes at most 77"):
        check_prompt(tiny_pipe.tokenizer, long)
    with pytest.raises(ValueError, match="CLIP takes at most 77"):
        sample(tiny_pipe, long, seed=0, num_inference_steps=2)


def test_unknown_attention_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown attention"):
        load_pipeline("toy", device="cpu", attention="flash9")
