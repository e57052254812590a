"""Image preprocessing (symmpo/train/images.py): crop is the processor alone; pad is
pad-to-square with the processor's mean colour, then the processor."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from symmpo.train.images import mean_colour


def gradient_image(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    y = np.linspace(255, 0, height, dtype=np.uint8)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 40, np.uint8),
        ],
        axis=2,
    )
    return Image.fromarray(np.ascontiguousarray(rgb))


def padded_by_hand(image: Image.Image, colour) -> Image.Image:
    """The square canvas written out with numpy: the image centred, the margins the colour."""
    pixels = np.asarray(image)
    height, width, _ = pixels.shape
    side = max(width, height)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = colour
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = pixels
    return Image.fromarray(canvas)


def test_clip_pads_with_its_mean_colour():
    assert mean_colour(CLIPImageProcessor()) == (122, 116, 104)


@pytest.mark.parametrize("size", [(96, 40), (33, 80), (64, 64)])
def test_pad_and_crop_pixel_values(make_collator, size):
    collator = make_collator()
    processor = collator.image_processor
    image = gradient_image(*size)

    def processed(im):
        return processor(images=[im], return_tensors="pt")["pixel_values"]

    collator.image_aspect_ratio = "crop"
    torch.testing.assert_close(collator.pixel_values([image]), processed(image), rtol=0, atol=0)
    collator.image_aspect_ratio = "pad"
    expected = processed(padded_by_hand(image, mean_colour(processor)))
    torch.testing.assert_close(collator.pixel_values([image]), expected, rtol=0, atol=0)
    if size[0] != size[1]:  # a non-square image: the two differ
        assert not torch.equal(expected, processed(image))


def test_an_unknown_aspect_ratio_is_refused(make_collator):
    from symmpo.train.collator import PreferenceCollator

    base = make_collator()
    with pytest.raises(ValueError, match=r"image_aspect_ratio must be one of .* got 'square'"):
        PreferenceCollator(
            base.tokenizer,
            base.image_processor,
            base.image_token_id,
            base.num_image_tokens,
            image_aspect_ratio="square",
        )
