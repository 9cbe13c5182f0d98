"""Words, tokens and alignments for prompt-to-prompt (Hertz et al., ICLR 2023; google/prompt-to-prompt
`seq_aligner.py` and `ptp_utils.get_word_inds`).

* `word_tokens`: the CLIP token positions of each word of a prompt. Words are runs of letters and
  digits or runs of punctuation, found with the tokenizer's character offsets, so "cat," is the
  word "cat" plus the word ",". (The official `get_word_inds` splits on spaces and walks decoded
  tokens, which breaks when punctuation touches a word.)
* `replace_mapper`: the 77x77 matrix of attention *replace*: word i of the source goes to word i of
  the target (equal word counts required); a word whose token count changes spreads its tokens over
  the target's with weight 1/n_target, as the official code does.
* `refine_mapper`: Needleman-Wunsch global alignment of the token ids (gap 0, match 1, mismatch -1,
  ties broken as the official code breaks them: target gap, then source gap, then diagonal); each
  target token gets its source token's map, or keeps its own (alpha 0) when it was inserted.
* `equalizer`: the reweight vector, with a length check (the notebook's `zip` silently drops
  values when words and values differ in length).
* `time_alphas`: per-step, per-token windows of cross-attention replacement.

Deliberate differences from the official code: after the last changed word, source and target
tokens advance together from where each prompt stands (the official `mapper[j, j]` uses the
target's index for the source too, which misaligns every later token once a replaced word changed
the token count); padding tokens of the target map to the source's padding (the official maps them
by absolute position, which hands the source's last words to the target's padding when the target
is shorter); unaligned refine entries point at token 0 with alpha 0 instead of -1.
"""

import re

import numpy as np
import torch


MAX_LEN = 77
_WORD = re.compile(r"[^\W_]+|[^\w\s]+|_+")


def words(prompt: str) -> list[tuple[str, int, int]]:
    """The words of a prompt with their character spans: [(word, start, end), ...]."""
    return [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(prompt)]


def _token_spans(tokenizer, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the prompt (with start and end tokens) and each token's character span."""
    try:
        enc = tokenizer(prompt, truncation=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError):  # a slow tokenizer (transformers 4): tokenize word by word
        ids = list(tokenizer(prompt, truncation=False).input_ids)
        offsets, inner = [(0, 0)], []
        for _, start, end in words(prompt):
            for token in tokenizer(prompt[start:end], add_special_tokens=False).input_ids:
                inner.append(token)
                offsets.append((start, end))
        offsets.append((0, 0))
        if inner != ids[1:-1]:
            raise ValueError(
                f"cannot map the words of {prompt!r} to its tokens with this tokenizer; use a fast (Rust) CLIP tokenizer"
            ) from None
    if len(ids) > MAX_LEN:
        raise ValueError(f"prompt has {len(ids)} tokens; CLIP takes at most {MAX_LEN}. Shorten it: {prompt[:60]!r}")
    return ids, offsets


def word_tokens(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """[(word, [token positions in the 77-token sequence]), ...] in prompt order (position 0 is the start token)."""
    ids, offsets = _token_spans(tokenizer, prompt)
    spans = words(prompt)
    out = [(w, []) for w, _, _ in spans]
    for pos in range(1, len(ids) - 1):  # skip start and end tokens
        start, end = offsets[pos]
        if end <= start:
            continue
        for k, (_, ws, we) in enumerate(spans):
            if ws <= start < we:
                out[k][1].append(pos)
                break
    for w, toks in out:
        if not toks:
            raise ValueError(f"could not find the tokens of {w!r} in {prompt!r}")
    return out


def token_count(tokenizer, prompt: str) -> int:
    """Tokens of the prompt including the start and end tokens."""
    return len(_token_spans(tokenizer, prompt)[0])


def token_indices(tokenizer, prompt: str, phrase: str) -> list[int]:
    """Token positions of every occurrence of `phrase` (one or more words) in `prompt`, case-insensitive.

    Raises ValueError naming the prompt when the phrase does not occur in it.
    """
    target = [w.lower() for w, _, _ in words(phrase)]
    if not target:
        raise ValueError(f"empty word {phrase!r}; give a word of the prompt")
    tokens = word_tokens(tokenizer, prompt)
    lowered = [w.lower() for w, _ in tokens]
    out = []
    for k in range(len(tokens) - len(target) + 1):
        if lowered[k : k + len(target)] == target:
            for _, toks in tokens[k : k + len(target)]:
                out.extend(toks)
    if not out:
        raise ValueError(f"{phrase!r} is not a word of the prompt {prompt!r}; choose words that appear in it")
    return sorted(set(out))


def replace_mapper(tokenizer, source: str, target: str) -> torch.Tensor:
    """(77, 77) mapper M of attention replace: target map n = sum_w source map w * M[w, n]."""
    ws, wt = word_tokens(tokenizer, source), word_tokens(tokenizer, target)
    if len(ws) != len(wt):
        raise ValueError(
            f"attention replace needs prompts with the same number of words: {source!r} has {len(ws)}, "
            f"{target!r} has {len(wt)}. Use mode 'refine' (token alignment; CLI: --mode refine) for prompts of different lengths."
        )
    m = torch.zeros(MAX_LEN, MAX_LEN)
    m[0, 0] = 1.0  # start token
    for (_, s), (_, t) in zip(ws, wt):
        if len(s) == len(t):
            m[s, t] = 1.0
        else:
            for j in t:
                m[s, j] = 1.0 / len(t)
    i, j = token_count(tokenizer, source) - 1, token_count(tokenizer, target) - 1  # end tokens
    while j < MAX_LEN:  # end token and padding, advancing together
        m[min(i, MAX_LEN - 1), j] = 1.0
        i, j = i + 1, j + 1
    return m


def align(x: list, y: list, gap: int = 0, match: int = 1, mismatch: int = -1) -> list[int]:
    """Needleman-Wunsch global alignment of sequences x (source) and y (target).

    Returns, for each element of y, the index of the x element it is aligned to, or -1 when it is an
    insertion. Ties are broken as in the official `seq_aligner.global_align`: gap in x (an
    insertion in y) first, then gap in y, then the diagonal.
    """
    n, m = len(x), len(y)
    score = np.zeros((n + 1, m + 1), dtype=np.int64)
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 1: left (insertion in y), 2: up (deletion from x), 3: diagonal
    score[0, 1:] = np.arange(1, m + 1) * gap
    score[1:, 0] = np.arange(1, n + 1) * gap
    trace[0, 1:] = 1
    trace[1:, 0] = 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left = score[i, j - 1] + gap
            up = score[i - 1, j] + gap
            diag = score[i - 1, j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i, j] = best
            trace[i, j] = 1 if best == left else 2 if best == up else 3
    out = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        move = trace[i, j]
        if move == 3:
            i, j = i - 1, j - 1
            out[j] = i
        elif move == 1:
            j -= 1
        else:
            i -= 1
    return out


def refine_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention refine: (mapper (77,) long, alphas (77,) float). Target token n takes source token mapper[n]'s
    map where alphas[n] = 1 and keeps its own where alphas[n] = 0 (a word the source does not have)."""
    xs, _ = _token_spans(tokenizer, source)
    ys, _ = _token_spans(tokenizer, target)
    aligned = align(xs, ys)
    mapper = torch.zeros(MAX_LEN, dtype=torch.long)
    alphas = torch.ones(MAX_LEN)
    for j, i in enumerate(aligned):
        mapper[j] = max(i, 0)
        alphas[j] = 1.0 if i >= 0 else 0.0
    for k, j in enumerate(range(len(ys), MAX_LEN)):  # padding to padding
        mapper[j] = min(len(xs) + k, MAX_LEN - 1)
    return mapper, alphas


def equalizer(tokenizer, prompt: str, words_: list[str], values: list[float]) -> torch.Tensor:
    """(77,) reweighting of the target prompt's tokens: ones, and `values[k]` on the tokens of `words_[k]`."""
    words_, values = list(words_), list(values)
    if len(words_) != len(values):
        raise ValueError(f"reweight got {len(words_)} words {words_} but {len(values)} values {values}; give one value per word")
    eq = torch.ones(MAX_LEN)
    for w, v in zip(words_, values):
        eq[token_indices(tokenizer, prompt, w)] = float(v)
    return eq


def _bounds(window, name: str) -> tuple[float, float]:
    if isinstance(window, (int, float)):
        window = (0.0, float(window))
    try:
        start, end = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a fraction of the steps (0.8) or a (start, end) pair, got {window!r}") from None
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"{name} = {window!r}: need 0 <= start <= end <= 1 (fractions of the steps)")
    return start, end


def time_alphas(tokenizer, target: str, num_steps: int, cross_replace_steps) -> torch.Tensor:
    """(num_steps + 1, 77): 1 where the target's token copies the source's cross-attention at that step.

    `cross_replace_steps` is a fraction (0.8 = the first 80% of the steps), a (start, end) pair, or a
    dict with a "default" (or "default_") window and per-word windows for words of the target.
    Windows cover steps [int(start * (N+1)), int(end * (N+1))), as the official code computes them.
    """
    if not isinstance(cross_replace_steps, dict):
        cross_replace_steps = {"default": cross_replace_steps}
    windows = dict(cross_replace_steps)
    default = windows.pop("default", windows.pop("default_", (0.0, 1.0)))
    alphas = torch.zeros(num_steps + 1, MAX_LEN)
    rows = num_steps + 1

    def fill(window, cols, name):
        start, end = _bounds(window, name)
        alphas[:, cols] = 0.0
        alphas[int(start * rows) : int(end * rows), cols] = 1.0

    fill(default, slice(None), "cross_replace_steps")
    for word, window in windows.items():
        fill(window, token_indices(tokenizer, target, word), f"cross_replace_steps[{word!r}]")
    return alphas


def self_window(num_steps: int, self_replace_steps) -> tuple[int, int]:
    """Steps [start, end) of self-attention replacement: int(fraction * N), as the official code."""
    start, end = _bounds(self_replace_steps, "self_replace_steps")
    return int(start * num_steps), int(end * num_steps)
