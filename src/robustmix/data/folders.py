"""``torchvision`` ImageFolders whose errors name the folder or file at fault.

PIL reports a truncated JPEG as ``OSError: image file is truncated (16 bytes not processed)``
and torchvision an empty class tree without its path, so a bad file deep in a 50k-image tree
would surface as an anonymous traceback. These wrappers add the path and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from PIL import Image
from torchvision.datasets import ImageFolder

__all__ = ["image_folder", "load_rgb"]


def load_rgb(path: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image (torchvision's default loader), naming it if unreadable."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")  # decodes now, inside the try: truncation shows here
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises all three for bad files
        raise ValueError(
            f"{path}: not a readable image ({exc}); the file may be truncated or corrupt: "
            "re-extract or re-download it"
        ) from exc


def image_folder(root: str | os.PathLike, transform: Callable[[Any], Any] | None, *, what: str) -> ImageFolder:
    """``ImageFolder(root)`` with :func:`load_rgb`; ``what`` names the folder's role in errors."""
    try:
        return ImageFolder(str(root), transform=transform, loader=load_rgb)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{what}: {root} holds no images in the expected layout <class>/<image> "
            f"(torchvision: {exc})"
        ) from exc
