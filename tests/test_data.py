"""symmpo.train.data: a bad record is refused with its idx and the field at fault; images of
any bit depth decode to 8-bit RGB."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from symmpo.train.data import BadRecord, records_from_rows
from symmpo.train.synthetic import make_synthetic_records


def test_bad_records_name_idx_and_field(make_collator, make_records):
    collator = make_collator()
    rows = make_synthetic_records(2)
    missing = dict(rows[0])
    del missing["resp_1_l"]
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_1_l' is missing"):
        records_from_rows([missing])
    empty = dict(rows[0], resp_2_w="   ")
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_2_w' is empty"):
        records_from_rows([empty])
    broken = dict(rows[1], image_2={"bytes": b"not a png", "path": None})
    record = records_from_rows([broken])[0][0]
    with pytest.raises(BadRecord, match=r"idx=1: field 'image_2' is not a readable image"):
        collator.check(record)
    short = make_collator(max_length=10)
    with pytest.raises(BadRecord, match=r"idx=0: field 'resp_1_w' has no target token left"):
        short.check(make_records(1)[0])
    kept, skipped = records_from_rows([missing, rows[1]], skip_bad=True)
    assert len(kept) == 1 and len(skipped) == 1


def _png(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_high_bit_depth_images_are_rescaled_not_clipped():
    gradient = np.arange(256, dtype=np.uint16)[None].repeat(4, 0)  # 8-bit levels 0..255
    sixteen = Image.fromarray(gradient * 257)  # the same levels in 16 bits
    assert sixteen.mode == "I;16"
    row = dict(make_synthetic_records(1)[0], image_1=_png(sixteen), image_2=sixteen.convert("I"))
    record = records_from_rows([row])[0][0]
    for which in ("image", "contrast_image"):  # a 16-bit PNG (I;16) and a PIL image in mode I
        rgb = np.asarray(record.load_image(which))
        assert rgb.dtype == np.uint8 and rgb.shape == (4, 256, 3)
        assert np.array_equal(rgb, gradient[..., None].repeat(3, -1).astype(np.uint8))
    floats = dict(row, image_1=Image.fromarray(gradient.astype(np.float32) / 255))
    with pytest.raises(BadRecord, match=r"idx=0: field 'image_1' is a floating-point image"):
        records_from_rows([floats])[0][0].load_image()
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.info["transparency"] = b"\x00\x80"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's P -> RGB warning, once per step, is avoided
        rgb = records_from_rows([dict(row, image_1=palette)])[0][0].load_image()
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (0, 0, 255)  # alpha dropped, as PIL
