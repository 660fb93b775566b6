"""Images -> the network's input: RGB, bilinear resize, x = pixel * scale + offset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .files import reason


def to_pil(image) -> Image.Image:
    """A path, PIL image or HWC uint8 array, as an RGB PIL image."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"{path}: no such image file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, expected an image file")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except UnidentifiedImageError:
            raise InputError(f"{path}: not an image file Pillow can read") from None
        except Image.DecompressionBombError as e:
            raise InputError(f"{path}: refused, too many pixels to decode safely ({e})") from None
        except OSError as e:
            if e.errno is None:  # Pillow's own: the bytes, not the filesystem
                raise InputError(f"{path}: damaged or truncated image ({e})") from None
            raise InputError(f"{path}: cannot read ({reason(e)})") from None
        except (SyntaxError, ValueError) as e:
            raise InputError(f"{path}: damaged or truncated image ({e})") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    raise InputError(f"an image must be a path, a PIL image or an HWC uint8 array, got {type(image).__name__}")


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


def to_input(image, size, scale, offset) -> np.ndarray:
    """One image as the network's float32 [H, W, 3] input."""
    H, W = size
    img = to_pil(image).resize((W, H), Image.BILINEAR)
    return (np.asarray(img, np.float32) * scale + offset).astype(np.float32)
