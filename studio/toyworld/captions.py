"""Captions and prompt sets of the toy world, drawn from the templates in `grammar.py`.

`caption(labels, rng)` describes an image for training (base words, synonyms and aliases mixed).
`prompts_for(concept, form)` gives the fixed evaluation prompt sets: a concept's own prompts with its
base word (`"direct"`), with its synonyms (`"synonym"`), or through its implicit aliases (`"alias"`).
"""

import itertools

import numpy as np

from .grammar import ALIAS_TEMPLATES, ATTRIBUTES, CONCEPTS, EMPTY_TEMPLATES, NONE, TEMPLATES, concept


SYNONYM_RATE = 0.3  # how often a training caption names a concept by a synonym instead of its base word
ALIAS_RATE = 0.1  # how often a training caption uses an alias template (for the attributes that have one)


def _word(name: str, rng: np.random.Generator) -> str:
    c = CONCEPTS[name]
    if c.synonyms and rng.random() < SYNONYM_RATE:
        return c.synonyms[rng.integers(len(c.synonyms))]
    return c.name


def article(text: str) -> str:
    """'a' -> 'an' before a vowel sound, for the words of this grammar."""
    words = text.split(" ")
    for i, w in enumerate(words[:-1]):
        if w == "a" and words[i + 1][:1] in "aeiou":
            words[i] = "an"
    return " ".join(words)


def caption(labels: dict, rng: np.random.Generator) -> str:
    """A caption that is true of an image with these labels (it may leave some attributes unsaid)."""
    if labels["shape"] == NONE:
        template = EMPTY_TEMPLATES[rng.integers(len(EMPTY_TEMPLATES))]
        return template.format(background=_word(labels["background"], rng))
    words = {a: _word(labels[a], rng) for a in ATTRIBUTES}
    if rng.random() < ALIAS_RATE:
        attribute = tuple(ALIAS_TEMPLATES)[rng.integers(len(ALIAS_TEMPLATES))]  # the attributes that have aliases
        aliases = CONCEPTS[labels[attribute]].aliases
        templates = ALIAS_TEMPLATES[attribute]
        template = templates[rng.integers(len(templates))]
        return article(template.format(alias=aliases[rng.integers(len(aliases))], **words))
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return article(template.format(**words))


def mentioned(template: str) -> set:
    return {a for a in ATTRIBUTES if "{" + a + "}" in template}


# ---------------------------------------------------------------- evaluation prompt sets

FORMS = ("direct", "synonym", "alias")

_EVAL_TEMPLATES = {
    "shape": ("a {colour} {shape}", "a {style} {colour} {shape} on a {background} background"),
    "colour": ("a {colour} {shape}", "a {style} {colour} {shape} on a {background} background"),
    "style": ("a {style} {colour} {shape}", "a {colour} {style} {shape} on a {background} background"),
}


def prompts_for(name: str, form: str = "direct", n: int | None = None) -> list[tuple[str, dict]]:
    """Evaluation prompts that ask for concept `name`, as (prompt, labels asked for) pairs.

    `form="direct"` uses the base word, `"synonym"` each synonym, `"alias"` each implicit alias. The
    other attributes cycle through all their values, so the set is balanced. `n` truncates.
    """
    c = concept(name)
    if form not in FORMS:
        raise ValueError(f"unknown prompt form {form!r}; use one of {FORMS}")
    if c.attribute == "background":
        raise ValueError("backgrounds are not erasable concepts in the toy world")
    others = [a for a in ATTRIBUTES if a != c.attribute]
    combos = list(itertools.product(*[ATTRIBUTES[a] for a in others]))
    combos = [dict(zip(others, v)) for v in combos]
    # interleave so that a short prefix of the list still covers every value of every attribute
    rng = np.random.default_rng(0)
    combos = [combos[i] for i in rng.permutation(len(combos))]

    out = []
    if form == "alias":
        templates = ALIAS_TEMPLATES[c.attribute]
        words = c.aliases
    else:
        templates = _EVAL_TEMPLATES[c.attribute]
        words = (c.name,) if form == "direct" else c.synonyms
    for i, fill in enumerate(combos):
        word = words[i % len(words)]
        template = templates[(i // len(words)) % len(templates)]
        fields = {**fill, c.attribute: word}
        text = template.format(alias=word, **fields) if form == "alias" else template.format(**fields)
        asked = {a: fill[a] for a in others if "{" + a + "}" in template}
        asked[c.attribute] = c.name
        out.append((article(text), asked))
    return out[:n] if n else out


def erasure_prompts(name: str) -> list[str]:
    """The prompt(s) that name a toy concept for an eraser, the way the papers name theirs ("nudity",
    "Van Gogh", "church"): the base word in its shortest template. Synonyms and aliases are left out
    on purpose: the evaluation measures whether the erasure reaches them."""
    c = concept(name)
    if c.attribute == "shape":
        return [article(f"a {c.name}")]
    if c.attribute == "colour":
        return [f"a {c.name} shape"]
    if c.attribute == "style":
        return [f"a {c.name} shape"]
    raise ValueError(f"{name!r} is a background; the toy world erases shapes, colours and styles")
