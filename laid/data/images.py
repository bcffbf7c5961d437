"""Images of Visual Haystacks entries: opened with one-line errors naming the file (and the entry).

A missing image raises `VHsImageMissing` (a FileNotFoundError), a truncated or non-image file
`VHsImageError` (a ValueError); both carry `path`, so the evaluation can name the VHs file and entry
that use the image (laid/eval/run.py).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError


class VHsImageError(ValueError):
    """An image of a haystack that cannot be decoded (truncated, not an image); `path` names the file."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = Path(path)


class VHsImageMissing(FileNotFoundError):
    """An image of a haystack that does not exist; `path` names the file."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = Path(path)


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; VHsImageMissing if absent, VHsImageError if unreadable (one line each)."""
    path = Path(path)
    if not path.is_file():
        raise VHsImageMissing(f"image {path} not found; check --image-root", path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise VHsImageError(f"image {path} cannot be read ({e}); replace it or regenerate the data", path) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header only; VHsImageError when it is missing or not an image."""
    path = Path(path)
    if not path.is_file():
        raise VHsImageMissing(f"image {path} not found; check --image-root", path)
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise VHsImageError(f"image {path} cannot be read ({e}); replace it or regenerate the data", path) from None


def check_images_readable(entries, decode: bool = False) -> int:
    """Open every distinct image of `entries` (header only, or fully decoded with `decode`).

    Returns the number of images checked; a missing or unreadable one raises one line naming the
    VHs file and entry that use it. Decoding catches truncated files whose header is intact.
    """
    seen: set[Path] = set()
    for e in entries:
        for rel in e.pos_image + e.neg_image:
            path = e.resolve(rel)
            if path in seen:
                continue
            try:
                load_image(path) if decode else image_size(path)
            except VHsImageMissing as err:
                raise FileNotFoundError(f"{e.source}: entry {e.index}: {err}") from None
            except VHsImageError as err:
                raise ValueError(f"{e.source}: entry {e.index}: {err}") from None
            seen.add(path)
    return len(seen)


def load_images(paths) -> list[Image.Image]:
    return [load_image(p) for p in paths]
