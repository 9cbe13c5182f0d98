"""The toy world's concept grammar, written down in one place.

An image shows one object (or none) on a plain background. Four attributes describe it:

    shape       circle, square, triangle, star, cross        (object concepts)
    colour      red, green, blue, yellow, purple
    style       solid, striped, dotted                         (style concepts: the fill)
    background  light, dark

Every concept has a base word, synonyms (other words that name it) and implicit aliases (phrases
that imply it without naming it, the way many unsafe prompts imply nudity without saying it).
Captions come from templates over these words; `captions.py` draws them.

The renderer (`render.py`), the caption sampler, the training script, the judge and the
evaluation harness all read their vocabularies from here, so a concept is added by editing this
file alone.
"""

import re
from dataclasses import dataclass, field


SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple")
STYLES = ("solid", "striped", "dotted")
BACKGROUNDS = ("light", "dark")

ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "style": STYLES, "background": BACKGROUNDS}
NONE = "none"  # the judge's answer for shape/colour/style when it sees no object

# RGB of each colour (the renderer jitters them slightly) and of each background.
RGB = {
    "red": (215, 35, 35),
    "green": (30, 170, 60),
    "blue": (35, 75, 225),
    "yellow": (240, 205, 30),
    "purple": (145, 45, 195),
}
BACKGROUND_RGB = {"light": (232, 232, 226), "dark": (34, 34, 40)}


@dataclass(frozen=True)
class ToyConcept:
    """One concept of the grammar: its attribute, base word, synonyms and implicit aliases."""

    attribute: str
    name: str
    synonyms: tuple = ()
    aliases: tuple = ()  # phrases that imply the concept; see `ALIAS_TEMPLATES` for how they are used
    words: tuple = field(init=False, default=())

    def __post_init__(self):
        object.__setattr__(self, "words", (self.name, *self.synonyms))


CONCEPTS = {
    # shapes: aliases are nouns that stand in for the shape ("a red pizza slice" is a red triangle)
    "circle": ToyConcept("shape", "circle", ("disc", "orb"), ("coin", "full moon")),
    "square": ToyConcept("shape", "square", ("box", "block"), ("floor tile", "dice face")),
    "triangle": ToyConcept("shape", "triangle", ("wedge", "trigon"), ("pizza slice", "yield sign")),
    "star": ToyConcept("shape", "star", ("pentagram", "five-pointed star"), ("sheriff badge", "starfish")),
    "cross": ToyConcept("shape", "cross", ("plus", "plus sign"), ("first aid sign", "crossroads")),
    # colours: aliases are things of that colour ("a square the colour of blood")
    "red": ToyConcept("colour", "red", ("crimson", "scarlet"), ("blood", "a fire truck")),
    "green": ToyConcept("colour", "green", ("emerald", "verdant"), ("grass", "a frog")),
    "blue": ToyConcept("colour", "blue", ("azure", "cobalt"), ("the sky", "the ocean")),
    "yellow": ToyConcept("colour", "yellow", ("golden", "lemon"), ("a banana", "sunflowers")),
    "purple": ToyConcept("colour", "purple", ("violet", "lilac"), ("grapes", "lavender")),
    # styles: aliases describe the fill by what has it ("a circle like a zebra's coat")
    "solid": ToyConcept("style", "solid", ("filled", "plain"), ("a paint chip", "a flat sticker")),
    "striped": ToyConcept("style", "striped", ("banded", "stripy"), ("a zebra's coat", "a barber pole")),
    "dotted": ToyConcept("style", "dotted", ("spotted", "polka-dot"), ("a ladybug's back", "a domino")),
    # backgrounds
    "light": ToyConcept("background", "light", ("white", "pale"), ()),
    "dark": ToyConcept("background", "dark", ("black", "night"), ()),
}

# Templates. Fields: {shape}, {colour}, {style}, {background}; each filled with a word of the concept.
# Not every template names every attribute: an unnamed attribute is free (drawn at random in the image).
TEMPLATES = (
    "a {colour} {shape}",
    "a {style} {colour} {shape}",
    "a {colour} {shape} on a {background} background",
    "a {style} {colour} {shape} on a {background} background",
    "a picture of a {style} {colour} {shape}",
    "a {shape}, {colour}, {style}",
    "a {colour} {style} {shape}",
    "a {shape}",
    "a {colour} shape",
    "a {style} {shape}",
)
# How aliases enter captions, per attribute. {alias} is the alias; the other fields as above.
ALIAS_TEMPLATES = {
    "shape": ("a {colour} {alias}", "a {style} {colour} {alias}", "a {alias}"),
    "colour": ("a {shape} the colour of {alias}", "a {style} {shape} the colour of {alias}"),
    "style": ("a {colour} {shape} like {alias}", "a {colour} {shape} patterned like {alias}"),
}
EMPTY_TEMPLATES = ("an empty {background} background", "nothing, a {background} background", "a blank {background} canvas")


def concept(name: str) -> ToyConcept:
    """The concept called `name` (a base word or a synonym)."""
    for c in CONCEPTS.values():
        if name == c.name or name in c.synonyms:
            return c
    known = ", ".join(CONCEPTS)
    raise ValueError(f"unknown toy-world concept {name!r}; the grammar knows: {known}")


def concepts_of(attribute: str) -> tuple:
    return tuple(c for c in CONCEPTS.values() if c.attribute == attribute)


def find_concept(prompts) -> str | None:
    """The toy concept that a prompt (or any of several) asks for, by base word or synonym as whole
    words ("a wedge" -> "triangle", "a plus sign" -> "cross"); None when it names none. When a prompt
    names several, the attribute order decides: shape, then colour, style, background ("a red
    triangle" -> "triangle", "a red shape" -> "red"). This is the one place that answers "which toy
    concept is this prompt?" for the CLI, the app and the erasers."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    text = " " + " ".join(p.lower() for p in prompts) + " "
    for c in CONCEPTS.values():  # in attribute order: shapes, colours, styles, backgrounds
        for word in c.words:
            if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
                return c.name
    return None
