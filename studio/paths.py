"""Where the studio's own files are, and how names become file names (one place for both)."""

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
TOY_MODEL = ASSETS / "toy-model"
TOY_JUDGE = ASSETS / "toy-judge"
TOY_JUDGE_CHECK = ASSETS / "toy-judge-check"  # the second toy judge (generation-like training), for the abstain rule
TOKENIZER = ASSETS / "tokenizer"
CONFIGS = ASSETS / "configs"  # local diffusers configs for single-file checkpoints (no download)
PROMPTS = ASSETS / "prompts"
SAMPLES = ASSETS / "samples"
MARKER = ".erasure-studio"  # written into every folder the studio creates; only folders holding it (or empty ones) are ever replaced


def slug(text: str, n: int = 40, empty: str = "prompt") -> str:
    """A file-name-safe form of `text`: lower case, [a-z0-9-] only, at most `n` characters.

    `slug("..") == "prompt"`, so a name from a job file can never climb out of its folder.
    """
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:n].strip("-") or empty


def inside(root, name: str) -> Path:
    """`root / name` for a name that must stay inside `root` (a job file's concept name, a model
    picked in the app); raises `ValueError` when it would resolve anywhere else."""
    root = Path(root).resolve()
    path = (root / name).resolve()
    if path == root or root not in path.parents:
        raise ValueError(f"{name!r} does not name a place inside {root}; use a plain name such as 'triangle'")
    return path
