"""What the tabs' forms and handlers share: the model fields every form has, the display names of
registry entries, and which concept a judge can look for in a prompt."""

import re
from dataclasses import dataclass

from studio.toyworld.grammar import find_concept


@dataclass
class Picked:
    """The fields at the top of the page, part of every tab's form: the model and its plug-in encoder."""

    model: str = ""
    text_encoder: str = ""


# display names of registry entries (a name missing here is shown as itself): (Attack tab, evaluation box)
ATTACK_LABELS = {
    "unlearndiffatk": ("UnlearnDiffAtk (optimised prefix tokens)", "UnlearnDiffAtk"),
    "random": ("random tokens (baseline)", "random tokens"),
    "none": ("no attack (baseline)", "none"),
}
INVERTER_LABELS = {
    "null-text": "null-text inversion",
    "negative-prompt": "negative-prompt inversion",
    "direct": "direct inversion",
    "ddim": "DDIM inversion (baseline)",
}


def judge_concept(prompts: list, judge_name: str = "toy") -> str | None:
    """The concept a judge can look for in these prompts: the toy world's (`grammar.find_concept`), or
    nudity for NudeNet when a prompt names it."""
    if judge_name == "nudenet":
        from studio.judges import NUDITY_CONCEPTS

        text = " ".join(p.lower() for p in prompts)
        return "nudity" if any(re.search(rf"(?<![\w-]){w}(?![\w-])", text) for w in NUDITY_CONCEPTS) else None
    return find_concept(prompts)
