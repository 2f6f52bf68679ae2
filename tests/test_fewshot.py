import json

import numpy as np
import pytest
from PIL import Image

from t2v_unlearn.concepts import Concept
from t2v_unlearn.fewshot import FewShotError, collect_fewshot, generate_cached, load_image_folder

CONCEPT = Concept(key="eiffel", name="Eiffel Tower", kind="object",
                  image_prompts=("a photo of the Eiffel Tower", "the Eiffel Tower at night"),
                  eval_prompts=("x",), preserve_prompts=(), probe="p", anchors=())


def test_cache_reused_across_calls(tiny_backend, tmp_path, monkeypatch):
    calls = []
    original = tiny_backend.generate_images

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_backend, "generate_images", counting)
    first, source_first = generate_cached(tiny_backend, ["a cat", "a dog"], [0, 1], tmp_path)
    second, source_second = generate_cached(tiny_backend, ["a cat", "a dog"], [0, 1], tmp_path)
    assert len(calls) == 1
    assert source_first == "generated"
    assert source_second == "cache"
    np.testing.assert_array_equal(first, second)


def test_cache_key_changes_with_seed_and_count(tiny_backend, tmp_path):
    generate_cached(tiny_backend, ["a cat"], [0], tmp_path)
    generate_cached(tiny_backend, ["a cat"], [1], tmp_path)
    generate_cached(tiny_backend, ["a cat", "a cat"], [0, 1], tmp_path)
    assert len([p for p in (tmp_path / "fewshot").iterdir() if p.is_dir()]) == 3


def test_collect_writes_images_and_prompts(tiny_backend, tmp_path):
    images, records = collect_fewshot(tiny_backend, [CONCEPT], shots=3, seed=7, cache_dir=tmp_path / "cache",
                                      out_dir=tmp_path / "fewshot")
    assert images["eiffel"].shape == (3, 32, 32, 3)
    manifest = json.loads((tmp_path / "fewshot" / "fewshot.json").read_text())
    assert [r["seed"] for r in manifest["images"]] == [7, 8, 9]
    assert [r["prompt"] for r in manifest["images"]] == [
        "a photo of the Eiffel Tower", "the Eiffel Tower at night", "a photo of the Eiffel Tower"]
    assert sorted(p.name for p in (tmp_path / "fewshot").glob("*.png")) == [
        "eiffel_00.png", "eiffel_01.png", "eiffel_02.png"]


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def test_folder_converts_grayscale_rgba_16bit(tmp_path):
    _save(tmp_path / "a_gray.png", np.full((40, 60), 128, dtype=np.uint8))
    rgba = np.zeros((50, 50, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent: composited on white
    _save(tmp_path / "b_rgba.png", rgba)
    Image.fromarray(np.full((30, 30), 65535, dtype=np.uint16)).save(tmp_path / "c_16bit.png")
    Image.new("P", (20, 20), 3).save(tmp_path / "d_palette.png")

    images, paths = load_image_folder(tmp_path, shots=4, size=(32, 32))
    assert images.shape == (4, 32, 32, 3)
    assert images.dtype == np.uint8
    assert (images[0] == 128).all()
    assert (images[1] == 255).all()
    assert (images[2] == 255).all()
    assert paths[0].endswith("a_gray.png")


def test_folder_with_too_few_images(tmp_path):
    _save(tmp_path / "one.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(FewShotError, match=r"shots=4 .* contains only 1 images"):
        load_image_folder(tmp_path, shots=4, size=(32, 32))


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(FewShotError, match="contains no images"):
        load_image_folder(tmp_path, shots=1, size=(32, 32))


def test_missing_folder(tmp_path):
    with pytest.raises(FewShotError, match="does not exist"):
        load_image_folder(tmp_path / "nope", shots=1, size=(32, 32))


def test_corrupt_file_named(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(FewShotError, match=r"cannot read image '.*b\.jpg'"):
        load_image_folder(tmp_path, shots=2, size=(32, 32))


def test_user_folder_replaces_generation(tiny_backend, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(2):
        _save(folder / f"{i}.png", np.full((64, 64, 3), 40 * i, dtype=np.uint8))
    concept = Concept(**{**CONCEPT.__dict__, "images_dir": str(folder)})
    images, records = collect_fewshot(tiny_backend, [concept], shots=2, seed=0, cache_dir=None,
                                      out_dir=tmp_path / "fewshot")
    assert (images["eiffel"][1] == 40).all()
    assert records[0].source.endswith("0.png")
    assert records[0].prompt is None


def test_oversized_image_named(tmp_path, monkeypatch):
    _save(tmp_path / "big.png", np.zeros((64, 64, 3), dtype=np.uint8))
    # PIL raises DecompressionBombError above twice MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(FewShotError, match=r"image '.*big\.png' is too large"):
        load_image_folder(tmp_path, shots=1, size=(32, 32))


def test_hidden_files_skipped(tmp_path):
    (tmp_path / "._a.png").write_bytes(b"macOS resource fork, not an image")
    _save(tmp_path / "b.png", np.full((8, 8, 3), 7, dtype=np.uint8))
    images, paths = load_image_folder(tmp_path, shots=1, size=(8, 8))
    assert paths[0].endswith("b.png")
    assert (images[0] == 7).all()


def test_float_image_in_byte_range(tmp_path):
    Image.fromarray(np.full((8, 8), 128.0, dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    images, _ = load_image_folder(tmp_path, shots=1, size=(8, 8))
    assert (images[0] == 128).all()
