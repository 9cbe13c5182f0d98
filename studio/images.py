"""Image input and output: safe loading of user images, labelled grids, PSNR/SSIM.

`load_image` accepts any common file (PNG, JPEG, WebP, GIF, BMP, TIFF; grayscale, RGBA, palette,
16-bit) and returns RGB; it refuses corrupt files and images over `MAX_PIXELS` with a clear error.
`fit_image` centre-crops to a square (or pads, with `mode="pad"`) and resizes to the model's
resolution with a Lanczos filter.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError


MAX_PIXELS = 64_000_000  # ~8000x8000; larger files are refused before decoding


class ImageError(ValueError):
    """An input image could not be used; the message says why."""


def load_image(source) -> Image.Image:
    """Open a path, bytes-like file or PIL/numpy image as RGB. Transparent pixels are composited on white."""
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8)
        image = Image.fromarray(arr)
    elif isinstance(source, Image.Image):
        image = source
    else:
        name = str(source) if isinstance(source, (str, Path)) else "the upload"
        if isinstance(source, (str, Path)) and not Path(source).is_file():
            raise ImageError(f"no image file at {source}")
        try:
            image = Image.open(source)
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{name} is {image.width}x{image.height}, over the {MAX_PIXELS // 1_000_000} MP limit; downscale it first")
            image.load()
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"{name} is not a readable image ({type(e).__name__}: {e})") from e
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image is {image.width}x{image.height}, over the {MAX_PIXELS // 1_000_000} MP limit; downscale it first")
    if image.width == 0 or image.height == 0:
        raise ImageError("image is empty (zero width or height)")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def fit_image(image: Image.Image, size: int, mode: str = "crop") -> Image.Image:
    """Square it (centre crop, or pad with the border's mean colour) and resize to `size` x `size`."""
    w, h = image.size
    if mode == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    elif mode == "pad":
        s = max(w, h)
        arr = np.asarray(image)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).mean(0).round().astype(int)
        canvas = Image.new("RGB", (s, s), tuple(int(c) for c in border))
        canvas.paste(image, ((s - w) // 2, (s - h) // 2))
        image = canvas
    else:
        raise ValueError(f"unknown fit mode {mode!r}; use 'crop' or 'pad'")
    if image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def psnr(a, b) -> float:
    """PSNR in dB between two images (PIL or uint8 arrays), peak 255."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a, b) -> float:
    """Mean SSIM (Wang et al. 2004; 7x7 uniform window, as skimage's default) over RGB channels."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ta = torch.from_numpy(a).permute(2, 0, 1)[None]
    tb = torch.from_numpy(b).permute(2, 0, 1)[None]
    pool = lambda x: torch.nn.functional.avg_pool2d(x, 7, stride=1)  # noqa: E731
    mu_a, mu_b = pool(ta), pool(tb)
    n = 49
    cov = n / (n - 1)
    var_a = cov * (pool(ta * ta) - mu_a**2)
    var_b = cov * (pool(tb * tb) - mu_b**2)
    cov_ab = cov * (pool(ta * tb) - mu_a * mu_b)
    s = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def make_grid(
    images: list,
    rows: int,
    cols: int,
    *,
    row_labels: list | None = None,
    col_labels: list | None = None,
    captions: list | None = None,
    cell: int = 128,
    title: str | None = None,
) -> Image.Image:
    """A labelled grid: `images` row-major; small images are upscaled with nearest neighbour to `cell` pixels.

    `captions` (one per image, optional) go under each cell, e.g. the judge's verdict.
    """
    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images for a {rows}x{cols} grid")
    font = _font(13)
    small = _font(11)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0
    if row_labels:
        label_w = min(260, max(int(measure.textlength(str(t), font=font)) for t in row_labels) + 16)
    head_h = 0
    if col_labels:
        head_h = 22
    title_h = 26 if title else 0
    cap_h = 16 if captions else 0
    W = label_w + cols * (cell + 4) + 4
    H = title_h + head_h + rows * (cell + 4 + cap_h) + 4
    grid = Image.new("RGB", (W, H), (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((8, 5), title, fill=(20, 20, 20), font=_font(15))
    for c, text in enumerate(col_labels or []):
        x = label_w + 4 + c * (cell + 4)
        draw.text((x + 2, title_h + 4), str(text)[:40], fill=(40, 40, 40), font=small)
    for r in range(rows):
        y = title_h + head_h + 4 + r * (cell + 4 + cap_h)
        if row_labels:
            lines = _wrap(draw, str(row_labels[r]), font, label_w - 12)[:6]
            for k, line in enumerate(lines):
                draw.text((6, y + 4 + 16 * k), line, fill=(20, 20, 20), font=font)
        for c in range(cols):
            im = images[r * cols + c]
            if im is None:
                continue
            if not isinstance(im, Image.Image):
                im = Image.fromarray(np.asarray(im))
            resample = Image.NEAREST if im.width * 2 <= cell else Image.LANCZOS
            x = label_w + 4 + c * (cell + 4)
            grid.paste(im.convert("RGB").resize((cell, cell), resample), (x, y))
            if captions and captions[r * cols + c]:
                draw.text((x + 2, y + cell + 1), str(captions[r * cols + c])[:32], fill=(60, 60, 60), font=small)
    return grid
