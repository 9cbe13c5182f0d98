"""Load a text-to-image pipeline from anything a user is likely to have.

    pipe = load_pipeline()                                   # the shipped toy model (assets/toy-model)
    pipe = load_pipeline("CompVis/stable-diffusion-v1-4")    # a hub id (needs the network, or the HF cache)
    pipe = load_pipeline("path/to/diffusers-folder")         # a local diffusers folder (also our erased models)
    pipe = load_pipeline("model.safetensors")                # one original-format checkpoint, with a local config

Device: CUDA, then MPS, then CPU. Dtype: fp16 on a GPU, fp32 on the CPU. Both can be overridden.
Attention: PyTorch SDPA (diffusers' default processor); `attention="xformers"` where it is installed
and CUDA is present; `attention="eager"` for explicit attention probabilities everywhere.

Weights are read as safetensors. A model that has only pickle weights (`*.bin`, `*.ckpt`, `*.pt`)
is refused unless `allow_pickle=True`, because unpickling runs arbitrary code.
"""

import json
import os
from pathlib import Path

import torch

from .paths import ASSETS, CONFIGS, TOY_MODEL  # noqa: F401 (ASSETS, TOY_MODEL: re-exported for older importers)


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
ERASURE_FILE = "erasure.json"  # marks an erased model folder that holds only the components it changed
ORACLE_FILE = "oracle.json"  # marks a toy oracle (retrained without one concept): same layout as an erased model


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says why and what to do."""


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def is_toy(model) -> bool:
    return model is None or str(model) in ("toy", "toyworld", str(TOY_MODEL))


def _check_no_pickle(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose weights exist only as pickle files."""
    if allow_pickle:
        return
    for sub in [folder, *[p for p in folder.iterdir() if p.is_dir()]]:
        files = [p for p in sub.iterdir() if p.is_file()]
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        safes = [p for p in files if p.suffix == ".safetensors"]
        if pickles and not safes:
            raise ModelLoadError(
                f"{sub} holds weights only as pickle ({pickles[0].name}); unpickling can run arbitrary code. "
                "Convert them to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust the source."
            )


def _resolve_dtype_kw(dtype):
    """diffusers 0.42 renamed `torch_dtype` to `dtype`; pass whichever the installed version takes."""
    import diffusers
    from packaging.version import Version

    return {"dtype": dtype} if Version(diffusers.__version__) >= Version("0.42.0") else {"torch_dtype": dtype}


def load_text_encoder(path, *, dtype=torch.float32, allow_pickle: bool = False):
    """A `CLIPTextModel` from a folder (for example an exported plug-in encoder), strictly."""
    from transformers import CLIPTextModel

    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(f"no text encoder folder at {path} (expected config.json and model.safetensors)")
    _check_no_pickle(path, allow_pickle)
    model, info = CLIPTextModel.from_pretrained(str(path), output_loading_info=True, use_safetensors=not allow_pickle or None)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ModelLoadError(f"text encoder at {path} is missing weights for {len(missing)} parameters, e.g. {missing[:3]}")
    return model.to(dtype)


def load_pipeline(
    model: str | os.PathLike | None = "toy",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attention: str = "sdpa",
    allow_pickle: bool = False,
    config: str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
):
    """Load a `StableDiffusionPipeline`; see the module docstring. Raises `ModelLoadError` with a fix."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    kw = dict(safety_checker=None, requires_safety_checker=False, **_resolve_dtype_kw(dtype))
    model = TOY_MODEL if is_toy(model) else model
    path = Path(model).expanduser()

    if path.is_dir():
        marker = next((path / m for m in (ERASURE_FILE, ORACLE_FILE) if (path / m).is_file()), None)
        if marker is not None:
            pipe = _load_erased(path, marker, device=device, dtype=dtype, allow_pickle=allow_pickle)
        else:
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(
                    f"{path} is not a diffusers pipeline folder (no model_index.json). "
                    "Pass a folder written by save_pretrained, a .safetensors checkpoint or a hub id."
                )
            _check_no_pickle(path, allow_pickle)
            pipe = StableDiffusionPipeline.from_pretrained(str(path), use_safetensors=None if allow_pickle else True, **kw)
    elif path.is_file():
        pipe = _load_single_file(path, config=config, allow_pickle=allow_pickle, kw=kw)
    elif _is_hub_id(str(model)):
        pipe = _load_from_hub(str(model), allow_pickle=allow_pickle, kw=kw)
    else:
        raise ModelLoadError(
            f"no model at {path}: the path does not exist and it is not a hub id (owner/name). "
            "Give a diffusers folder, a .safetensors file, a hub id or 'toy'."
        )

    if text_encoder is not None:
        pipe.text_encoder = load_text_encoder(text_encoder, dtype=dtype, allow_pickle=allow_pickle)
    pipe.to(device)
    set_attention(pipe, attention)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_attention(pipe, attention: str = "sdpa") -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention == "sdpa":
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    elif attention == "eager":
        pipe.unet.set_attn_processor(AttnProcessor())
    elif attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError as e:
            raise ModelLoadError("attention='xformers' needs the xformers package (pip install 'erasure-studio[xformers]')") from e
        if pipe.device.type != "cuda":
            raise ModelLoadError("attention='xformers' needs a CUDA device; use the default 'sdpa' elsewhere")
        pipe.enable_xformers_memory_efficient_attention()
    else:
        raise ModelLoadError(f"unknown attention {attention!r}; use 'sdpa', 'xformers' or 'eager'")


def _is_hub_id(s: str) -> bool:
    """'owner/name', the form every SD repository on the hub has."""
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~")) and not s.endswith((".safetensors", *PICKLE_SUFFIXES))


def _load_from_hub(repo: str, *, allow_pickle: bool, kw: dict):
    from diffusers import StableDiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return StableDiffusionPipeline.from_pretrained(repo, use_safetensors=None if allow_pickle else True, **kw)
    except EnvironmentError as e:
        text = str(e)
        if "safetensors" in text and not allow_pickle and "not found" in text.lower():
            raise ModelLoadError(f"{repo} has no safetensors weights; pass allow_pickle=True (--allow-pickle) if you trust it") from e
        why = "the hub is offline (HF_HUB_OFFLINE is set)" if offline else "it is not in the local cache and the hub could not be reached"
        raise ModelLoadError(
            f"could not load {repo!r} from the Hugging Face hub: {why}. "
            f"On a machine with network run `hf download {repo} --local-dir <folder>` "
            "and pass that local folder instead."
        ) from e


def guess_config(path: Path) -> Path:
    """The shipped local config that fits an original-format checkpoint (SD v1 or v2) by its keys."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return CONFIGS / "sd-v2"
    return CONFIGS / "sd-v1"


def _load_single_file(path: Path, *, config, allow_pickle: bool, kw: dict):
    from diffusers import StableDiffusionPipeline

    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint; unpickling can run arbitrary code. Use a .safetensors file, "
            "or pass allow_pickle=True (CLI: --allow-pickle) if you trust the source."
        )
    if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise ModelLoadError(f"{path.name}: not a checkpoint this loader knows (.safetensors, or pickle with allow_pickle)")
    config = Path(config) if config is not None else guess_config(path) if path.suffix == ".safetensors" else CONFIGS / "sd-v1"
    if not (config / "model_index.json").is_file():
        raise ModelLoadError(f"no diffusers config folder at {config}; pass config= a local diffusers folder of the same architecture")
    try:
        return StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True, **kw)
    except Exception as e:  # diffusers raises many kinds here
        raise ModelLoadError(f"could not load {path.name} with the config in {config}: {e}") from e


def _load_erased(folder: Path, marker: Path, *, device, dtype, allow_pickle: bool):
    """An erased model saved by `erasers` (or a toy oracle): the base model plus the components it changed."""
    from diffusers import UNet2DConditionModel

    info = json.loads(marker.read_text())
    base = info.get("base_model", "toy")
    pipe = load_pipeline(base, device="cpu", dtype=dtype, allow_pickle=allow_pickle)
    for component in info.get("components", []):
        sub = folder / component
        _check_no_pickle(sub, allow_pickle)
        if component == "unet":
            # loaded in its dtype (not cast with .to(dtype), which makes diffusers warn about fp32 modules on every load)
            pipe.unet = UNet2DConditionModel.from_pretrained(str(sub), use_safetensors=True, **_resolve_dtype_kw(dtype))
        elif component == "text_encoder":
            pipe.text_encoder = load_text_encoder(sub, dtype=dtype, allow_pickle=allow_pickle)
        else:
            raise ModelLoadError(f"{marker} lists component {component!r}, which this loader cannot swap in")
    return pipe
