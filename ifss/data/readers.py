"""Reading one image or one label file, with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from ifss.errors import IfssError


def read_image(path: Path) -> torch.Tensor:
    """uint8 RGB tensor, 3 x H x W."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise IfssError(f"image file {path} is missing") from None
    except RuntimeError as err:
        raise IfssError(f"image file {path} cannot be decoded ({err}); replace or remove it") from None


def read_label(path: Path) -> np.ndarray:
    """uint8 label map, H x W (palette PNGs give their indices, not colours)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise IfssError(
                    f"label file {path} is a {img.mode} image; labels must be single-channel or "
                    "palette PNGs holding class ids"
                )
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise IfssError(f"label file {path} is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise IfssError(f"label file {path} cannot be decoded ({err}); replace or remove it") from None
