"""The prompt-to-prompt option syntax, one for everywhere (the CLI, job files and the app).

    parse_reweight("blue=2, striped=0.5")      -> {"blue": 2.0, "striped": 0.5}
    parse_reweight(["blue=2", "striped=0.5"])  -> the same (the CLI's repeatable --reweight)
    parse_blend("triangle")                    -> "triangle"          (a word in both prompts)
    parse_blend("red circle")                  -> ["red", "circle"]   (words in both prompts)
    parse_blend("red | blue")                  -> (["red"], ["blue"]) (source words | target words)
    parse_blend("")                            -> None                (no local blend)

The results are what `EditConfig(reweight=..., blend_words=...)` takes. Pure Python: no torch.
"""

import math
import re


_WORDS = re.compile(r"[,\s]+")


def _words(text: str) -> list[str]:
    return [w for w in _WORDS.split(text.strip()) if w]


def parse_reweight(text_or_list) -> dict:
    """WORD=SCALE pairs separated by commas (or a list of such strings) -> {word: scale}; None or "" -> {}."""
    if text_or_list is None:
        return {}
    items = [text_or_list] if isinstance(text_or_list, str) else list(text_or_list)
    out = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            word, sep, value = part.rpartition("=")
            word = word.strip()
            try:
                if not sep or not word or len(word.split()) > 1:
                    raise ValueError
                scale = float(value)
            except ValueError:
                raise ValueError(
                    f"reweight {part.strip()!r}: write WORD=SCALE pairs separated by commas, e.g. 'blue=2, striped=0.5'"
                ) from None
            if not math.isfinite(scale):
                raise ValueError(f"reweight {part.strip()!r}: the scale must be a finite number, e.g. 'blue=2'")
            out[word] = scale
    return out


def parse_blend(text):
    """Local-blend words: "WORDS" (in both prompts) or "SOURCE WORDS | TARGET WORDS"; None or "" -> None.

    One word gives a str, several a list, a bar a (source list, target list) tuple.
    """
    text = "" if text is None else str(text).strip()
    if not text:
        return None
    if "|" in text:
        parts = text.split("|")
        if len(parts) != 2 or not _words(parts[0]) or not _words(parts[1]):
            raise ValueError(
                f"blend {text!r}: write WORDS, or SOURCE WORDS | TARGET WORDS with words on both sides of one bar, e.g. 'red | blue'"
            )
        return (_words(parts[0]), _words(parts[1]))
    words = _words(text)
    if not words:
        return None
    return words[0] if len(words) == 1 else words
