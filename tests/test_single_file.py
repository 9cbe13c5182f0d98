"""Single-file checkpoints: our diffusers -> LDM export, loading it back, and the shipped SD configs."""

import pickle

import pytest
import torch
from safetensors import safe_open

from conftest import ROOT, build_tiny_pipe
from studio.convert import (
    ConversionError,
    pipeline_to_ldm,
    random_sd_pipeline,
    save_config_folder,
    save_single_file,
    unet_to_ldm,
)
from studio.loading import CONFIGS, ModelLoadError, guess_config, load_pipeline
from studio.sampling import encode_prompts, sample


PROMPTS = ["a red triangle", "a blue striped star"]

# Parameter counts of the public SD models: UNet v1.x, UNet v2.x, VAE, CLIP ViT-L/14 text, OpenCLIP ViT-H text cut to 23 layers.
SD_PARAMS = {"v1": (859_520_964, 83_653_863, 123_060_480), "v2": (865_910_724, 83_653_863, 340_387_840)}


def assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), f"{name}: keys differ: {sorted(set(sa) ^ set(sb))[:5]}"
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"


def same_images(a, b) -> bool:
    """Both pipelines sample the same prompts and seeds; are the images bit-for-bit equal?

    Models built in a test are in training mode and loaded ones in eval mode, which picks a different
    CPU attention kernel in the VAE (differences of 1e-7); compare both in eval mode.
    """
    for pipe in (a, b):
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            model.eval()
    images = [sample(p, PROMPTS, seed=[0, 1], num_inference_steps=3, output_type="pt").images for p in (a, b)]
    return torch.equal(*images)


def tiny_v2_pipe():
    """The tiny pipe with an OpenCLIP-like (GELU) text encoder, "!" padding and v-prediction: SD v2 in miniature."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    pipe = build_tiny_pipe(seed=1, prediction_type="v_prediction")
    torch.manual_seed(1)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    pipe.text_encoder = CLIPTextModel(config)
    pipe.tokenizer = CLIPTokenizer.from_pretrained(str(ROOT / "assets" / "tokenizer"), pad_token="!")
    return pipe


def export(pipe, tmp_path, name="model"):
    """Write `pipe` as a single file plus a weightless config folder; return both paths."""
    path = save_single_file(pipe, tmp_path / f"{name}.safetensors")
    config = save_config_folder(pipe, tmp_path / f"{name}-config")
    return path, config


def test_single_file_round_trip_v1_gives_the_same_weights_and_images(tiny_pipe, tmp_path):
    path, config = export(tiny_pipe, tmp_path)
    assert not list(config.rglob("*.safetensors")) and not list(config.rglob("*.bin"))  # configs only

    loaded = load_pipeline(path, config=config, device="cpu")
    assert_same_weights(tiny_pipe, loaded)
    assert same_images(tiny_pipe, loaded)


def test_export_uses_the_original_ldm_names(tiny_pipe, tmp_path):
    path, _ = export(tiny_pipe, tmp_path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight")
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in keys)
    assert len(keys) == sum(len(getattr(tiny_pipe, n).state_dict()) for n in ("unet", "vae", "text_encoder"))
    # Down block 0 (cross-attention, 1 layer): resnet, transformer, then the downsampler in its own slot.
    assert {
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",  # up block 0 has no attention: upsampler at .1
        "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.2.upsample.conv.weight",  # LDM counts decoder blocks from the bottom
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    } <= keys
    assert not [k for k in keys if any(name in k for name in ("down_blocks", "up_blocks", "mid_block.", "resnets"))]
    assert not [k for k in keys if k.startswith("first_stage_model.") and ("to_q" in k or "group_norm" in k)]
    assert q.ndim == 4 and q.shape[2:] == (1, 1)  # LDM's VAE attention is a 1x1 convolution


def test_single_file_round_trip_v2_open_clip(tmp_path):
    pipe = tiny_v2_pipe()
    path, config = export(pipe, tmp_path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)

    loaded = load_pipeline(path, config=config, device="cpu")
    assert_same_weights(pipe, loaded)
    assert loaded.tokenizer.pad_token_id == 0 and loaded.scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(encode_prompts(pipe, PROMPTS), encode_prompts(loaded, PROMPTS))
    assert same_images(pipe, loaded)


@pytest.mark.parametrize(
    "kw",
    [
        # three blocks, plain block first, two layers per block, two transformer layers, linear projection
        dict(
            block_out_channels=(16, 32, 32),
            layers_per_block=2,
            transformer_layers_per_block=2,
            use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        # four blocks as in SD (cross-attention everywhere but the lowest resolution), three layers per block
        dict(
            block_out_channels=(16, 16, 32, 32),
            layers_per_block=3,
            attention_head_dim=(2, 4, 4, 8),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ),
    ],
)
def test_unet_export_is_the_inverse_of_diffusers_import_for_any_layout(kw):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, cross_attention_dim=16, norm_num_groups=8, **{"attention_head_dim": 4, **kw})
    ldm = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet).items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    original = unet.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_models_outside_the_sd_family_are_refused_by_name(tiny_pipe, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=16,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        class_embed_type="timestep",
    )
    with pytest.raises(ConversionError, match="class_embed_type='timestep'"):
        unet_to_ldm(unet)
    with pytest.raises(ConversionError, match="text_encoder_format='sdxl'"):
        pipeline_to_ldm(tiny_pipe, text_encoder_format="sdxl")
    with pytest.raises(ConversionError, match="name it model.safetensors"):
        save_single_file(tiny_pipe, tmp_path / "model.ckpt")


def test_guess_config_picks_v1_or_v2_from_the_keys(tiny_pipe, tmp_path):
    v1 = save_single_file(tiny_pipe, tmp_path / "v1.safetensors")
    v2 = save_single_file(tiny_v2_pipe(), tmp_path / "v2.safetensors")
    assert guess_config(v1) == CONFIGS / "sd-v1"
    assert guess_config(v2) == CONFIGS / "sd-v2"
    # `text_encoder_format` overrides the guess from the activation
    forced = save_single_file(tiny_pipe, tmp_path / "forced.safetensors", text_encoder_format="open_clip")
    assert guess_config(forced) == CONFIGS / "sd-v2"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_shipped_sd_configs_have_the_public_architecture(version):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    pipe = random_sd_pipeline(version, device="meta")  # configs parsed, models built, nothing allocated
    counts = tuple(sum(p.numel() for p in m.parameters()) for m in (pipe.unet, pipe.vae, pipe.text_encoder))
    assert counts == SD_PARAMS[version]
    assert pipe.unet.config.sample_size * 8 == {"v1": 512, "v2": 768}[version]
    assert pipe.scheduler.config.prediction_type == {"v1": "epsilon", "v2": "v_prediction"}[version]
    assert pipe.tokenizer.pad_token_id == {"v1": 49407, "v2": 0}[version]
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Our export of the full-size model carries the keys diffusers uses to recognise real SD v1/v2 files.
    ldm = pipeline_to_ldm(pipe)
    assert infer_diffusers_model_type(ldm) == version
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    for key, shape in {**CANONICAL_KEYS["both"], **CANONICAL_KEYS[version]}.items():
        assert shapes.get(key) == shape, f"{key}: {shapes.get(key)} in our export, {shape} in SD {version} checkpoints"


# Keys (and shapes) of the original SD checkpoints that a wrong block numbering would miss: downsamplers in
# their own input_blocks slot, upsamplers after the transformer (.2) or alone (.1), the decoder counted from
# the bottom, 1x1-conv VAE attention, and the text encoder of each version.
U, V = "model.diffusion_model.", "first_stage_model."
CANONICAL_KEYS = {
    "both": {
        U + "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        U + "input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        U + "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        U + "middle_block.2.emb_layers.1.weight": (1280, 1280),
        U + "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        U + "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        U + "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        U + "output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        U + "out.2.weight": (4, 320, 3, 3),
        V + "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        V + "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        V + "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        V + "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        V + "decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
    },
    "v1": {
        U + "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        U + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
    },
    "v2": {
        U + "input_blocks.1.1.proj_in.weight": (320, 320),
        U + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.transformer.resblocks.22.mlp.c_fc.weight": (4096, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "cond_stage_model.model.ln_final.weight": (1024,),
    },
}


def test_config_folder_keeps_a_tokenizer_with_added_tokens(tiny_pipe, tmp_path):
    from transformers import CLIPTokenizer

    plain = save_config_folder(tiny_pipe, tmp_path / "plain")
    assert (plain / "tokenizer" / "vocab.json").read_bytes() == (ROOT / "assets" / "tokenizer" / "vocab.json").read_bytes()
    tiny_pipe.tokenizer.add_tokens(["<erased-concept>"])
    added = save_config_folder(tiny_pipe, tmp_path / "added")
    tokenizer = CLIPTokenizer.from_pretrained(str(added / "tokenizer"))
    assert len(tokenizer) == 49409 and tokenizer.convert_tokens_to_ids("<erased-concept>") == 49408


def test_shipped_configs_hold_no_weights():
    for folder in (CONFIGS / "sd-v1", CONFIGS / "sd-v2"):
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert files and all(p.suffix in (".json", ".txt") for p in files), files
        assert sum(p.stat().st_size for p in files) < 2_000_000


class _Marker:
    """Unpickling this touches a file: proof that a refused checkpoint was never unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickle_checkpoint_is_refused_unread_without_opt_in(tiny_pipe, tmp_path):
    marker = tmp_path / "unpickled"
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": _Marker(marker)}))
    with pytest.raises(ModelLoadError, match=r"pickle.*allow_pickle=True"):
        load_pipeline(bad, config=CONFIGS / "sd-v1", device="cpu")
    assert not marker.exists()

    good = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": pipeline_to_ldm(tiny_pipe)}, good)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        load_pipeline(good, device="cpu")
    config = save_config_folder(tiny_pipe, tmp_path / "config")
    assert_same_weights(tiny_pipe, load_pipeline(good, config=config, device="cpu", allow_pickle=True))
