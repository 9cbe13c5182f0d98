"""Build the CLIP tokenizer files in assets/tokenizer from OpenAI's BPE merges file.

The merges file `bpe_simple_vocab_16e6.txt.gz` ships inside the `clip-anytorch` wheel. This script
fetches that wheel with `pip download --no-deps` (or reads a `.gz` or wheel given with `--source`),
derives the 49,408-token vocabulary exactly as OpenAI's `SimpleTokenizer` does, and writes
`vocab.json`, `merges.txt`, `tokenizer_config.json` and `special_tokens_map.json`, which both
transformers 4 and 5 read with `CLIPTokenizer.from_pretrained`.

    python scripts/make_tokenizer.py [--source path/to/wheel-or-gz] [--out assets/tokenizer]
"""

import argparse
import gzip
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer keeps lines[1 : 49152 - 256 - 2 + 1]


def bytes_to_unicode() -> dict:
    """GPT-2 / CLIP byte-level mapping: every byte gets a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_bpe_gz(source: Path | None) -> bytes:
    if source is not None and source.suffix == ".gz":
        return source.read_bytes()
    if source is None:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), "clip-anytorch==2.6.0"],
            check=True,
        )
        source = next(tmp.glob("clip_anytorch-*.whl"))
    with zipfile.ZipFile(source) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(BPE_NAME))
        return wheel.read(name)


def build(gz_bytes: bytes) -> tuple[dict, list]:
    lines = gzip.GzipFile(fileobj=io.BytesIO(gz_bytes)).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=None, help="clip-anytorch wheel or the .gz itself")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "tokenizer")
    args = parser.parse_args()

    vocab, merges = build(read_bpe_gz(args.source))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (args.out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (args.out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
