"""Export a diffusers `StableDiffusionPipeline` as one original-format (LDM / CompVis) `.safetensors` file.

This is the layout that the original Stable Diffusion repositories, AUTOMATIC1111 and ComfyUI read, and
the one `StableDiffusionPipeline.from_single_file` (and so `studio.loading.load_pipeline`) reads back:

    model.diffusion_model.*              the UNet      (input_blocks / middle_block / output_blocks)
    first_stage_model.*                  the VAE       (encoder.down / mid / decoder.up)
    cond_stage_model.transformer.*       SD v1 text encoder, OpenAI CLIP (Hugging Face names)
    cond_stage_model.model.*             SD v2 text encoder, OpenCLIP (resblocks, fused in_proj)

    save_single_file(pipe, "erased.safetensors")                      # then load it anywhere
    pipe = load_pipeline("erased.safetensors", config="assets/configs/sd-v1")
    save_config_folder(pipe, "my-config")                             # a weightless config to load it with

It is the inverse of diffusers' `loaders/single_file_utils.py` (LDM -> diffusers), written from the
module structure rather than from a fixed table, so it works for any UNet2DConditionModel of the SD
family: any number of blocks, any `layers_per_block`, blocks with and without cross-attention. Every
tensor of every component is mapped exactly once, or the export fails naming the key it cannot place:
nothing is dropped silently.

What it deliberately does not write:

* SD v2 checkpoints from Stability hold a 24th OpenCLIP block (`resblocks.23`) and `text_projection`,
  which SD v2 never uses (it reads the penultimate layer, so diffusers' SD2 text encoder has 23 layers).
  A diffusers model does not have them, so they are not invented; loaders ignore their absence
  (diffusers skips them anyway; A1111 and ComfyUI load checkpoints non-strictly, though neither has
  been run against our files here).
* No EMA copy, no `position_ids` buffer, no `alphas_cumprod` schedule tensors.

`random_sd_pipeline("v1" | "v2")` builds a full-size SD pipeline with random weights from the shipped
configs in `assets/configs`, for speed and memory checks where no weights can be downloaded.
"""

import json
import os
import shutil
from pathlib import Path

import torch

from .paths import CONFIGS, TOKENIZER


UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."  # SD v1 (OpenAI CLIP, Hugging Face names)
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD v2 (OpenCLIP)
TEXT_ENCODER_FORMATS = ("auto", "clip", "open_clip")

# diffusers ResnetBlock2D -> LDM ResBlock (UNet)
UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
# diffusers ResnetBlock2D -> LDM ResnetBlock (VAE): same names except the shortcut
VAE_RESNET = {"norm1.": "norm1.", "conv1.": "conv1.", "norm2.": "norm2.", "conv2.": "conv2.", "conv_shortcut.": "nin_shortcut."}
# diffusers Attention (VAE mid block) -> LDM AttnBlock, whose q/k/v/proj_out are 1x1 convolutions
VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


class ConversionError(ValueError):
    """A model cannot be written in the original layout; the message names the key or setting and the fix."""


# --------------------------------------------------------------------------------------------------
# Renaming by module prefix


def _rename(state_dict: dict, prefixes: dict, what: str) -> dict:
    """Rename every key by its longest matching module prefix; refuse keys that match none."""
    ordered = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key, tensor in state_dict.items():
        new = next((dst + key[len(src) :] for src, dst in ordered if key.startswith(src)), None)
        if new is None:
            raise ConversionError(
                f"{what}: no place for {key!r} in the original SD layout. Only the SD v1/v2 family "
                "(UNet2DConditionModel, AutoencoderKL, CLIPTextModel) can be exported as a single file."
            )
        if new in out:
            raise ConversionError(f"{what}: two tensors map to {new!r} (the second is {key!r})")
        out[new] = tensor
    return out


def _submodule_prefixes(src: str, dst: str, names: dict) -> dict:
    """Prefix pairs for one resnet: `src + norm1.` -> `dst + in_layers.0.`, ..."""
    return {src + a: dst + b for a, b in names.items()}


# --------------------------------------------------------------------------------------------------
# UNet


def unet_prefixes(unet) -> dict:
    """diffusers -> LDM module prefixes for a UNet2DConditionModel, read off its blocks.

    LDM numbers `input_blocks` consecutively: 0 is conv_in, then per down block one entry per layer
    (`.0` resnet, `.1` transformer) and one for the downsampler (`.0.op`) unless it is the last block.
    `output_blocks` has one entry per up-block layer (`.0` resnet, `.1` transformer) and the block's
    upsampler sits in its last entry, after the transformer if there is one (`.2.conv`, else `.1.conv`).
    """
    p = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    i = 1
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j in range(len(block.resnets)):
            p.update(_submodule_prefixes(f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{i}.0.", UNET_RESNET))
            if j < len(attentions):
                p[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{i}.1."
            i += 1
        if block.downsamplers is not None:
            p[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{i}.0.op."
            i += 1

    mid = unet.mid_block
    if mid is not None:
        for j in range(len(mid.resnets)):
            p.update(_submodule_prefixes(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.", UNET_RESNET))
        for j in range(len(getattr(mid, "attentions", None) or [])):
            p[f"mid_block.attentions.{j}."] = f"middle_block.{2 * j + 1}."

    i = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j in range(len(block.resnets)):
            p.update(_submodule_prefixes(f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{i}.0.", UNET_RESNET))
            if j < len(attentions):
                p[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{i}.1."
            if j == len(block.resnets) - 1 and block.upsamplers is not None:
                p[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{i}.{2 if attentions else 1}.conv."
            i += 1
    return p


def _check_unet(unet) -> None:
    """Refuse UNets that diffusers' single-file loader could not read back."""
    config = unet.config
    if not isinstance(config.layers_per_block, int):
        raise ConversionError(
            f"layers_per_block={config.layers_per_block!r} differs per block; the original layout (and diffusers' "
            "single-file loader) needs one integer for all blocks"
        )
    for name in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "num_class_embeds"):
        if getattr(config, name, None) is not None:
            raise ConversionError(f"UNet has {name}={getattr(config, name)!r}; only plain SD v1/v2 UNets can be exported")


def unet_to_ldm(unet) -> dict:
    """The UNet's weights under LDM names, without the `model.diffusion_model.` prefix."""
    _check_unet(unet)
    return _rename(unet.state_dict(), unet_prefixes(unet), "UNet")


# --------------------------------------------------------------------------------------------------
# VAE


def vae_prefixes(vae) -> dict:
    """diffusers -> LDM module prefixes for an AutoencoderKL. LDM counts decoder `up` blocks from the bottom."""
    p = {
        "quant_conv.": "quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
    }
    for part in ("encoder", "decoder"):
        p[f"{part}.conv_in."] = f"{part}.conv_in."
        p[f"{part}.conv_out."] = f"{part}.conv_out."
        p[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        mid = getattr(vae, part).mid_block
        for j in range(len(mid.resnets)):
            p.update(_submodule_prefixes(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", VAE_RESNET))
        for j in range(len([a for a in mid.attentions if a is not None])):
            p.update(_submodule_prefixes(f"{part}.mid_block.attentions.{j}.", f"{part}.mid.attn_{j + 1}.", VAE_ATTENTION))

    for b, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            p.update(_submodule_prefixes(f"encoder.down_blocks.{b}.resnets.{j}.", f"encoder.down.{b}.block.{j}.", VAE_RESNET))
        if block.downsamplers is not None:
            p[f"encoder.down_blocks.{b}.downsamplers.0.conv."] = f"encoder.down.{b}.downsample.conv."

    n = len(vae.decoder.up_blocks)
    for b, block in enumerate(vae.decoder.up_blocks):
        k = n - 1 - b
        for j in range(len(block.resnets)):
            p.update(_submodule_prefixes(f"decoder.up_blocks.{b}.resnets.{j}.", f"decoder.up.{k}.block.{j}.", VAE_RESNET))
        if block.upsamplers is not None:
            p[f"decoder.up_blocks.{b}.upsamplers.0.conv."] = f"decoder.up.{k}.upsample.conv."
    return p


def vae_to_ldm(vae) -> dict:
    """The VAE's weights under LDM names, without the `first_stage_model.` prefix.

    LDM's mid-block attention uses 1x1 convolutions, so its linear q/k/v/proj_out weights get two
    trailing singleton dimensions: `(C, C)` -> `(C, C, 1, 1)`.
    """
    out = _rename(vae.state_dict(), vae_prefixes(vae), "VAE")
    for key, tensor in out.items():
        if ".mid.attn_" in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]  # (C, C) -> (C, C, 1, 1)
    return out


# --------------------------------------------------------------------------------------------------
# Text encoder


def _text_state_dict(text_encoder) -> dict:
    """CLIPTextModel weights with flat names (`embeddings.*`, `encoder.*`, `final_layer_norm.*`).

    transformers >= 5.6 flattened CLIPTextModel; older versions nest everything under `text_model.`.
    """
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def clip_to_ldm(text_encoder) -> dict:
    """SD v1 (OpenAI CLIP): the Hugging Face names, under `cond_stage_model.transformer.text_model.`."""
    sd = _text_state_dict(text_encoder)
    unknown = [k for k in sd if not k.startswith(("embeddings.", "encoder.layers.", "final_layer_norm."))]
    if unknown:
        raise ConversionError(f"text encoder: no place for {unknown[0]!r} in the SD v1 layout (is it a CLIPTextModel?)")
    return {CLIP_PREFIX + k: v for k, v in sd.items()}


def open_clip_to_ldm(text_encoder) -> dict:
    """SD v2 (OpenCLIP): `resblocks.i` with q/k/v fused into `attn.in_proj_weight` (rows q, then k, then v)."""
    sd = _text_state_dict(text_encoder)
    prefixes = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.": "ln_final.",
    }
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        prefixes.update(
            {
                src + "layer_norm1.": dst + "ln_1.",
                src + "layer_norm2.": dst + "ln_2.",
                src + "mlp.fc1.": dst + "mlp.c_fc.",
                src + "mlp.fc2.": dst + "mlp.c_proj.",
                src + "self_attn.out_proj.": dst + "attn.out_proj.",
            }
        )
    qkv = {k: sd.pop(k) for k in [k for k in sd if k.split(".")[-2] in ("q_proj", "k_proj", "v_proj")]}
    out = _rename(sd, prefixes, "text encoder")
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.self_attn.", f"transformer.resblocks.{i}.attn."
        for kind in ("weight", "bias"):
            parts = [qkv.pop(f"{src}{p}_proj.{kind}") for p in ("q", "k", "v")]
            out[f"{dst}in_proj_{kind}"] = torch.cat(parts, dim=0)  # (3D, D) or (3D,)
    if qkv:
        raise ConversionError(f"text encoder: no place for {next(iter(qkv))!r} in the SD v2 layout")
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def guess_text_encoder_format(text_encoder) -> str:
    """ "open_clip" (SD v2) or "clip" (SD v1), read off the activation: OpenCLIP ViT-H uses GELU, OpenAI CLIP quick-GELU."""
    return "open_clip" if text_encoder.config.hidden_act == "gelu" else "clip"


# --------------------------------------------------------------------------------------------------
# Whole pipeline


def pipeline_to_ldm(pipe, *, text_encoder_format: str = "auto", dtype: torch.dtype | None = None) -> dict:
    """All of the pipeline's weights (UNet, VAE, text encoder) under original single-file names.

    `text_encoder_format`: "clip" writes SD v1's layout, "open_clip" SD v2's, "auto" picks by the
    text encoder's activation (see `guess_text_encoder_format`). `dtype` casts floating tensors (e.g. fp16).
    """
    if text_encoder_format not in TEXT_ENCODER_FORMATS:
        raise ConversionError(f"text_encoder_format={text_encoder_format!r}; use one of {TEXT_ENCODER_FORMATS}")
    fmt = guess_text_encoder_format(pipe.text_encoder) if text_encoder_format == "auto" else text_encoder_format
    tensors = {UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet).items()}
    tensors.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae).items()})
    tensors.update(open_clip_to_ldm(pipe.text_encoder) if fmt == "open_clip" else clip_to_ldm(pipe.text_encoder))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors


def save_single_file(
    pipe,
    path: str | os.PathLike,
    *,
    text_encoder_format: str = "auto",
    dtype: torch.dtype | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write `pipe` as one original-format `.safetensors` file (atomically) and return its path.

    Load it back with `load_pipeline(path, config=...)`, where the config is a weightless diffusers
    folder of the same architecture (`assets/configs/sd-v1`/`sd-v2`, or one from `save_config_folder`).
    """
    from .checkpoint import atomic_save_tensors

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConversionError(f"{path.name}: a single-file checkpoint is written as .safetensors; name it {path.stem}.safetensors")
    tensors = pipeline_to_ldm(pipe, text_encoder_format=text_encoder_format, dtype=dtype)
    meta = {"format": "pt", "written_by": "erasure-studio studio.convert", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    atomic_save_tensors(path, tensors, metadata=meta)
    return path


# --------------------------------------------------------------------------------------------------
# Config folders (diffusers layout, no weights)


def write_tokenizer(folder: str | os.PathLike, *, pad_token: str = "<|endoftext|>") -> Path:
    """Our CLIP BPE tokenizer files (from assets/tokenizer) with the given pad token.

    SD v1 pads with `<|endoftext|>` (id 49407); SD v2 pads with "!" (id 0), as OpenCLIP does.
    vocab.json and merges.txt are copied byte for byte, so git stores them once.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(TOKENIZER / name, folder / name)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


def save_config_folder(pipe, folder: str | os.PathLike) -> Path:
    """A diffusers pipeline folder with every config and the tokenizer, but no weights.

    It is what `from_single_file(..., config=folder)` needs to rebuild `pipe`'s architecture from a
    single-file checkpoint. Works on models built on the meta device too (nothing is materialised).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)  # model_index.json
    pipe.unet.save_config(folder / "unet")
    pipe.vae.save_config(folder / "vae")
    pipe.scheduler.save_config(folder / "scheduler")
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    if _has_our_vocabulary(pipe.tokenizer):
        write_tokenizer(folder / "tokenizer", pad_token=str(pipe.tokenizer.pad_token))
    else:  # e.g. added textual-inversion tokens: keep the tokenizer as it is
        pipe.tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def _has_our_vocabulary(tokenizer) -> bool:
    """Is this the plain 49,408-token CLIP vocabulary of assets/tokenizer (nothing added)?"""
    if len(tokenizer) != 49408:
        return False
    return tokenizer.get_vocab() == json.loads((TOKENIZER / "vocab.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Full-size SD with random weights (GPU speed and memory checks without downloads)


def sd_config_folder(version: str) -> Path:
    """The shipped weightless config folder of SD "v1" or "v2"."""
    folders = {"v1": CONFIGS / "sd-v1", "v2": CONFIGS / "sd-v2"}
    if version not in folders:
        raise ValueError(f"version={version!r}; use 'v1' or 'v2'")
    if not (folders[version] / "model_index.json").is_file():
        raise FileNotFoundError(f"no config at {folders[version]}; run `python scripts/make_sd_configs.py`")
    return folders[version]


def random_sd_pipeline(version: str = "v1", *, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0):
    """A `StableDiffusionPipeline` with the real SD v1/v2 architecture and random weights.

    Built from the shipped configs (no download), with the weights created directly on `device`.
    The images it makes are noise; it is for measuring speed and memory at full size.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = sd_config_folder(version)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=vae.to(dtype).eval(),
        text_encoder=text_encoder.to(dtype).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=unet.to(dtype).eval(),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
