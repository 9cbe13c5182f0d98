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


METHODS = ("null-text", "negative-prompt", "direct", "ddim")  # keep in step with editing.INVERTERS

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
}

__all__ = ["METHODS", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'inversion' has no attribute {name!r}")
