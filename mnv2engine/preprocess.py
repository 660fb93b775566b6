"""Images -> the network's input: RGB, the crop the weights were evaluated with, a
bilinear resize, x = pixel * scale + offset.

Weights reach their published accuracy on the input they were evaluated with, and the
frameworks crop differently before resizing (the crop is recorded per source in mnv2.h5):
- "central" (Keras, TF, TFLite): the central `fraction` of each side
  (tf.image.central_crop), then a resize of that to the input size;
- "shorter-side" (torchvision, the ONNX model zoo): the shorter side resized to the input
  size / `fraction` (256 for 224), then a centre crop of the input size, its offset
  rounded (torchvision's CenterCrop);
- "shorter-side-floor" (Hugging Face): the same, the offset floored (transformers'
  center_crop): an odd margin puts the crop one pixel to the other side;
- "none": the whole image resized to the input size (the aspect ratio is lost).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .files import reason


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def expand_images(paths) -> list[Path]:
    """Image paths, with each folder replaced by the image files in it (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            try:
                out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            except OSError as e:
                raise InputError(f"{p}: cannot list the folder ({reason(e)})") from None
        else:
            out.append(p)
    return out


def to_pil(image) -> Image.Image:
    """A path, PIL image or HWC uint8 array, as an RGB PIL image."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"{path}: no such image file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, expected an image file")
        return decode(path, path)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    raise InputError(f"an image must be a path, a PIL image or an HWC uint8 array, got {type(image).__name__}")


def decode(source, name) -> Image.Image:
    """An image file (a path, or a binary file object such as io.BytesIO of a file's
    bytes) as an RGB PIL image; every way it can fail is an InputError naming `name`."""
    try:
        with Image.open(source) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: refused, too many pixels to decode safely ({e})") from None
    except OSError as e:
        if e.errno is None:  # Pillow's own: the bytes, not the filesystem
            raise InputError(f"{name}: damaged or truncated image ({e})") from None
        raise InputError(f"{name}: cannot read ({reason(e)})") from None
    except (SyntaxError, ValueError) as e:
        raise InputError(f"{name}: damaged or truncated image ({e})") from None


def _array_to_pil(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 HWC (0..255), got dtype {a.dtype}; "
                         "for preprocessed float tensors use Engine.forward")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InputError(f"image arrays must be HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"empty image of shape {a.shape}")
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


CROPS = ("central", "shorter-side", "shorter-side-floor", "none")


def cropped(img: Image.Image, size, crop: str, fraction: float) -> Image.Image:
    """The image as the network sees it: `size` (H, W) pixels, by the recipe `crop`."""
    H, W = size
    w, h = img.size
    if crop == "central":
        top, left = int((h - h * fraction) / 2), int((w - w * fraction) / 2)
        img = img.crop((left, top, w - left, h - top))
    elif crop.startswith("shorter-side"):  # Resize(S) then CenterCrop((H, W))
        short = round(max(H, W) / fraction)
        rw, rh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize((rw, rh), Image.BILINEAR)
        if crop == "shorter-side-floor":
            top, left = (rh - H) // 2, (rw - W) // 2
        else:
            top, left = int(round((rh - H) / 2)), int(round((rw - W) / 2))
        return img.crop((left, top, left + W, top + H))
    return img.resize((W, H), Image.BILINEAR)


def to_input(image, size, scale, offset, crop: str = "none", fraction: float = 1.0) -> np.ndarray:
    """One image as the network's float32 [H, W, 3] input."""
    img = cropped(to_pil(image), size, crop, fraction)
    return (np.asarray(img, np.float32) * scale + offset).astype(np.float32)
