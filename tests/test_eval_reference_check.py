"""A data file whose ``logps`` column the released reference pass computed with the tiny model
(tests/released_preprocessing.py): train.py reads it as the reference only under the released
template and images (zero rewards at step 0), and ``--check_reference`` tells a fitting file
from a mismatched one."""

import copy
import io
import json

import pytest
from PIL import Image
from released_preprocessing import released_logps
from train_script import load_train_script

from symmpo.eval.cli import main as evaluate_main
from symmpo.train.data import records_from_rows
from symmpo.train.synthetic import make_synthetic_records


def png(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def expand_to_square(image, background=(122, 116, 104)):
    """The released evaluation's padding: centred on a square of CLIP's mean colour."""
    side = max(image.size)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def write_released_file(folder, tiny, n=6, pad_images=False):
    """A released-layout parquet file of n records with wide images (64 x 40; one answer
    starting with a digit, one over two lines) and the logps column the released reference pass
    writes (JSON, 15 values), computed on the images as given (the released training's crop),
    or padded to a square first when ``pad_images`` (the released evaluation's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tokenizer, model, processor = tiny
    rows = make_synthetic_records(n, seed=21)
    rows[0]["resp_1_w"] = "2 " + rows[0]["resp_1_w"]
    rows[1]["resp_2_w"] = rows[1]["resp_2_w"].replace(", ", ".\n", 1)
    model = copy.deepcopy(model).eval()
    for row in rows:
        for k in (1, 2):
            image = Image.open(io.BytesIO(row[f"image_{k}"]["bytes"])).convert("RGB")
            row[f"image_{k}"] = png(image.resize((64, 40)))
    for row, record in zip(rows, records_from_rows(rows)[0], strict=True):
        if pad_images:
            for name in ("image", "contrast_image"):
                setattr(record, name, expand_to_square(record.load_image(name)))
        row["logps"] = released_logps(model, tokenizer, processor, record)
        row.pop("scene_1"), row.pop("scene_2")
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000.parquet")
    return folder


@pytest.fixture(scope="module")
def released_file(tmp_path_factory, tiny):
    return write_released_file(tmp_path_factory.mktemp("released") / "data", tiny)


def test_the_file_holds_the_released_15_values(released_file):
    import pyarrow.parquet as pq

    row = pq.read_table(released_file).to_pylist()[0]
    values = json.loads(row["logps"])["logps"]
    assert len(values) == 15 and all(isinstance(v, list) for v in values[10:])
    records = records_from_rows([row])[0]
    assert records[0].ref_logps == values[:5] and records[0].ref_avg_logps == values[5:10]


def test_released_logps_give_zero_rewards_at_step_0(released_file, tmp_path, capsys):
    train = load_train_script()
    flags = ["--data", str(released_file), "--heldout", "2", "--batch_size", "1"]
    flags += ["--max_steps", "1", "--beta", "1", "--beta_contrast", "1"]
    result = train.main([*flags, "--output_dir", str(tmp_path / "released")])
    out = capsys.readouterr().out
    assert "the data's logps column, its sums" in out
    assert not (tmp_path / "released" / "ref_cache").exists()
    rewards = [result["history"][0][f"reward_{k}"] for k in range(5)]
    assert all(abs(r) < 1e-4 for r in rewards), rewards

    result = train.main([*flags, "--output_dir", str(tmp_path / "chat"), "--template", "processor"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "logps column was computed under" in line]
    assert len(lines) == 1 and "this run uses --template processor" in lines[0]
    assert (tmp_path / "chat" / "ref_cache").exists()  # recomputed under the chat template
    rewards = [result["history"][0][f"reward_{k}"] for k in range(5)]
    assert all(abs(r) < 1e-4 for r in rewards), rewards  # its own reference: zero again


def test_check_reference_tells_a_fitting_file_from_mismatched_ones(
    released_file, tmp_path, tiny, capsys
):
    fits = evaluate_main(["--check_reference", str(released_file)])
    assert fits["records"] == 6 and fits["max_abs_diff_sum"] < 1e-4
    assert fits["max_abs_diff_average"] < 1e-4
    assert "largest |model - file|" in capsys.readouterr().out

    chat = evaluate_main(["--check_reference", str(released_file), "--template", "processor"])
    # Another prompt (the random tiny model is nearly uniform, so "large" is 0.1 here, 1e4
    # times the fitting file's difference; a trained model differs by whole nats).
    assert chat["max_abs_diff_sum"] > 0.1
    padded = write_released_file(tmp_path / "padded", tiny, pad_images=True)
    assert (
        evaluate_main(["--check_reference", str(padded), "--image_aspect_ratio", "pad"])[
            "max_abs_diff_sum"
        ]
        < 1e-4
    )
    crop = evaluate_main(["--check_reference", str(padded)])
    assert crop["max_abs_diff_sum"] > 0.1  # made on padded images, read on cropped ones
    assert not (tmp_path / "eval.jsonl").exists()


def test_check_reference_on_a_file_without_logps_is_a_one_line_error(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_synthetic_records(2, seed=3)
    for row in rows:
        row.pop("scene_1"), row.pop("scene_2")
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "a.parquet")
    with pytest.raises(SystemExit, match="no usable record with a logps column"):
        evaluate_main(["--check_reference", str(tmp_path / "data")])
