"""Image preprocessing before the vision tower (``--image_aspect_ratio``).

- ``crop`` (default): the image processor alone (CLIP's: resize the short side, centre crop).
  This is what the released SymMPO training ran (its ``--image_aspect_ratio pad`` reaches only
  the model config, which its training path never reads), so the released data's ``logps``
  were computed this way.
- ``pad``: the image first padded to a square with the processor's mean colour (for CLIP
  (122, 116, 104)), centred, then the processor: LLaVA-1.5's own training recipe and the
  released evaluation scripts. Nothing of the image is cropped away.

Both images of a record (m and m') go through the same preprocessing.
"""

from __future__ import annotations

from PIL import Image

IMAGE_ASPECT_RATIOS = ("crop", "pad")


def mean_colour(processor) -> tuple[int, ...]:
    """The processor's per-channel mean as 0-255 integers (what LLaVA pads with)."""
    mean = getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5)
    return tuple(int(channel * 255) for channel in mean)


def pad_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    """``image`` centred on a square canvas of ``colour``, side max(width, height); a square
    image is returned as it is. Odd margins put the extra pixel after the image."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def pixel_values(processor, images: list, aspect_ratio: str = "crop"):
    """(N, 3, H, W) pixel values of PIL ``images`` under ``aspect_ratio`` (crop or pad)."""
    if aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(
            f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {aspect_ratio!r}"
        )
    if aspect_ratio == "pad":
        colour = mean_colour(processor)
        images = [pad_to_square(image, colour) for image in images]
    return processor(images=images, return_tensors="pt")["pixel_values"]
