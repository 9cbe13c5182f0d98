"""The toy judge: reads shape, colour, style and background off a 32x32 image.

It plays the role that NudeNet, the ImageNet ResNet-50 and the WikiArt style ViT play in the
papers: it decides whether a generated image shows a concept. It can answer "none" for shape,
colour and style when it sees no object.

    judge = ToyJudge.load()                 # assets/toy-judge
    judge.predict(images)                   # [{"shape": "triangle", "colour": "red", ...}, ...]
    judge.shows(images, "triangle")         # bool array: does each image show a triangle?
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ..paths import TOY_JUDGE
from .grammar import concept
from .models import HEADS, JudgeNet


DEFAULT_JUDGE = TOY_JUDGE


def to_judge_input(images) -> torch.Tensor:
    """PIL images, a uint8 array (N, H, W, 3) or a float tensor (N, 3, H, W) in [0, 1] -> (N, 3, 32, 32) in [-1, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.dim() == 3:
            x = x[None]
        if x.shape[-1] != 32 or x.shape[-2] != 32:
            x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        return x * 2 - 1
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, np.ndarray):
        arr = images if images.ndim == 4 else images[None]
    else:
        arr = np.stack([np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR)) for im in images])
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x


class ToyJudge:
    name = "toy"

    def __init__(self, net: JudgeNet, device="cpu"):
        self.net = net.eval().to(device)
        self.device = device

    @classmethod
    def load(cls, path: str | Path = DEFAULT_JUDGE, device="cpu") -> "ToyJudge":
        path = Path(path)
        weights = path / "judge.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"no toy judge at {path} (expected judge.safetensors); train one with `studio toyworld train`")
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        net = JudgeNet(width=config.get("width", 32))
        net.load_state_dict(load_file(str(weights)), strict=True)
        return cls(net, device)

    @torch.no_grad()
    def probabilities(self, images, batch_size: int = 256) -> dict:
        """Per-attribute class probabilities, each (N, n_classes), classes in `HEADS` order."""
        x = to_judge_input(images)
        out = {a: [] for a in HEADS}
        for i in range(0, len(x), batch_size):
            logits = self.net(x[i : i + batch_size].to(self.device))
            for a in HEADS:
                out[a].append(logits[a].softmax(-1).cpu())
        return {a: torch.cat(v) for a, v in out.items()}

    def predict(self, images) -> list[dict]:
        probs = self.probabilities(images)
        n = len(next(iter(probs.values())))
        return [{a: HEADS[a][int(probs[a][i].argmax())] for a in HEADS} for i in range(n)]

    def shows(self, images, name: str) -> np.ndarray:
        """Whether each image shows concept `name` (top-1 of its attribute's head, as the papers' classifiers)."""
        c = concept(name)
        probs = self.probabilities(images)[c.attribute]
        return (probs.argmax(-1) == HEADS[c.attribute].index(c.name)).numpy()
