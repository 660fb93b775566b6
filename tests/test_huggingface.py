"""The Hugging Face converter against transformers running the same save_pretrained folder.

Random He-scaled convs and randomised BatchNorm statistics (torch_reference.randomized),
configs with tf_padding True and False, depth_multiplier 0.35 and 1.0, 1001 labels, the
classification model and the headless MobileNetV2Model; one engine per folder, at every size.
"""
import json

import numpy as np
import pytest
import torch

from mnv2engine import Engine, WeightFileError, convert

from conftest import close, probabilities, require, softmax
from torch_reference import randomized

transformers = require("transformers")
require("safetensors")

SIZES = (96, 160, 224, 113)

# name: (config, classification head?, weight file)
CONFIGS = {
    "0.35-tf_padding-1001-labels": (dict(depth_multiplier=0.35, tf_padding=True, num_labels=1001, image_size=96,
                                         id2label={i: f"class {i}" for i in range(1001)}), True, "safetensors"),
    "0.35-symmetric-bin": (dict(depth_multiplier=0.35, tf_padding=False, num_labels=10), True, "bin"),
    "1.0-headless": (dict(depth_multiplier=1.0, tf_padding=True), False, "safetensors"),
}


def save(config, classify, weights, folder, seed=0):
    cls = transformers.MobileNetV2ForImageClassification if classify else transformers.MobileNetV2Model
    model = randomized(cls(transformers.MobileNetV2Config(**config)), seed)
    model.save_pretrained(folder)
    if weights == "bin":
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return model


@pytest.fixture(scope="module", params=CONFIGS)
def saved(request, tmp_path_factory):
    config, classify, weights = CONFIGS[request.param]
    folder = tmp_path_factory.mktemp("hf") / "model"
    return request.param, save(config, classify, weights, folder), folder


def test_one_engine_matches_transformers_at_every_size(saved, tmp_path):
    name, model, folder = saved
    config, classify, _ = CONFIGS[name]
    ws = convert(folder, tmp_path / "mnv2.h5")
    assert ws.padding == ("same" if config["tf_padding"] else "symmetric")
    assert ws.size == (config.get("image_size", 224),) * 2
    assert ws.classes == (config["num_labels"] if classify else 0)
    engine = Engine.load(tmp_path / "mnv2.h5")
    if "id2label" in config:
        assert engine.labels[:2] == ["class 0", "class 1"] and len(engine.labels) == 1001
    for size in SIZES:
        x = np.random.default_rng(size).normal(0, 1, (2, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            out = model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        ref = (out.logits if classify else out.pooler_output).numpy()
        assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
        try:
            close(engine.forward(x), ref)
        except AssertionError as e:
            raise AssertionError(f"{name} at {size}: {e}") from None


def test_the_preprocessor_config_gives_the_preprocessing(tmp_path):
    folder = tmp_path / "m"
    save(dict(depth_multiplier=0.35, num_labels=3), True, "safetensors", folder)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    (folder / "preprocessor_config.json").write_text(json.dumps(dict(
        image_mean=mean, image_std=std, size={"shortest_edge": 200}, crop_size={"height": 160, "width": 160})))
    ws = convert(folder, tmp_path / "mnv2.h5")
    assert (ws.crop, ws.crop_fraction) == ("shorter-side-floor", 0.8)
    pixel = np.array([0, 128, 255], np.float32)
    np.testing.assert_allclose(pixel * ws.scale + ws.offset, (pixel / 255 - mean) / std, rtol=1e-6)


@pytest.mark.parametrize("change,message", [
    (dict(model_type="resnet"), "not a MobileNetV2: config.json describes model_type 'resnet'"),
    (dict(finegrained_output=False), "finegrained_output=false with depth_multiplier=0.35"),
    (dict(min_depth=16), "min_depth=16 with depth_multiplier=0.35 makes a layer of 16 channels 16 wide"),
    (dict(depth_multiplier=0.6), r"depth_multiplier=0.6; the engine runs \(0.35"),
    (dict(output_stride=16), "output_stride=16"),
])
def test_configs_the_engine_does_not_run_are_refused_naming_the_setting(tmp_path, change, message):
    folder = tmp_path / "m"
    save(dict(depth_multiplier=0.35, num_labels=3), True, "safetensors", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(WeightFileError, match=message):
        convert(folder, tmp_path / "mnv2.h5")
    assert not (tmp_path / "mnv2.h5").exists()


def test_mnv2_convert_takes_the_folder(tmp_path, capsys):
    from mnv2engine.cli import main
    save(dict(depth_multiplier=0.35, num_labels=3, image_size=128), True, "safetensors", tmp_path / "m")
    assert main(["convert", str(tmp_path / "m"), str(tmp_path / "dst.h5")]) == 0
    assert "alpha=0.35, size=128x128, classes=3, padding=same" in capsys.readouterr().out


def test_predict_on_photos_matches_transformers_with_its_image_processor(tmp_path, photo_paths):
    """End to end: the engine gets the file names of the real photos; transformers gets
    them as its own MobileNetV2ImageProcessor prepares them, from the same folder's
    preprocessor_config.json (shorter side 256 -> 192 here, centre crop, mean/std 0.5).
    dragonfly.bmp's margin is odd (235 - 160): transformers floors its half."""
    from PIL import Image

    folder = tmp_path / "m"
    model = save(dict(depth_multiplier=0.35, num_labels=10, image_size=160), True, "safetensors", folder)
    processor = transformers.MobileNetV2ImageProcessor(size={"shortest_edge": 192},
                                                        crop_size={"height": 160, "width": 160})
    processor.save_pretrained(folder)
    engine = Engine.load(folder)
    images = [Image.open(p).convert("RGB") for p in photo_paths]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model(pixels).logits.numpy()
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max(), "reference ignores its input"
    close(probabilities(engine.predict(photo_paths, top=10), 10), softmax(ref))
