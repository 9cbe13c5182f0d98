"""Inversion and real-image editing: DDIM, null-text (pivotal), negative-prompt and direct inversion,
prompt-to-prompt attention control through diffusers attention processors.

    from inversion import edit
    out = edit(pipe, "photo.png", "a red circle", "a blue circle", method="null-text")
    out.reconstruction, out.edit

One file per method (`ddim.py`, `null_text.py`, `negative_prompt.py`, `direct.py`), each with its
config dataclass; `editing.py` is the one-call API, `control.py` / `attention.py` / `align.py` are
prompt-to-prompt, `result.py` saves and loads inversions, `cli.py` is `studio edit`.

Names are imported on first use, so that `studio`'s CLI can import `inversion.cli` without torch.
"""

import importlib


# The one registry of inverters: name -> (module, config class). `editing.INVERTERS` resolves it to
# (invert function, config class); the CLI, the app and `InversionResult` read their choices from it.
# Adding an inverter is one file with `invert(pipe, image, prompt, config, ...)` and one line here.
REGISTRY = {
    "null-text": ("null_text", "NullTextConfig"),
    "negative-prompt": ("negative_prompt", "NegativePromptConfig"),
    "direct": ("direct", "DirectInversionConfig"),
    "ddim": ("ddim", "DDIMInversionConfig"),
}
METHODS = tuple(REGISTRY)  # the names, first the default

_LAZY = {
    "DDIMInversionConfig": "ddim",
    "DirectInversionConfig": "direct",
    "NegativePromptConfig": "negative_prompt",
    "NullTextConfig": "null_text",
    "EditConfig": "editing",
    "EditResult": "editing",
    "INVERTERS": "editing",
    "edit": "editing",
    "invert": "editing",
    "reconstruct": "editing",
    "InversionResult": "result",
    "parse_reweight": "options",
    "parse_blend": "options",
}

__all__ = ["REGISTRY", "METHODS", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'inversion' has no attribute {name!r}")
