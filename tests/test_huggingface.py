"""The Hugging Face converter against transformers running the same save_pretrained folder.

Random He-scaled convs and randomised BatchNorm statistics (torch_reference.randomized),
configs with tf_padding True and False, depth_multiplier 0.35 and 1.0, 1001 labels, the
classification model and the headless MobileNetV2Model; one engine per folder, at every size.
Also: crops and sizes whose height and width differ, against transformers' image processor,
and folders that leave settings to transformers' defaults.
"""
import json

import numpy as np
import pytest

from mnv2engine import Engine, WeightFileError, convert

from conftest import close, probabilities, require, softmax

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import randomized

transformers = require("transformers")
require("safetensors")


def processor_class():
    """transformers' PIL image processor (transformers 5 names it so; MobileNetV2ImageProcessor
    is the torchvision one there, and the PIL one before). Looked up when used: the lookup
    imports transformers' image-processing modules."""
    return getattr(transformers, "MobileNetV2ImageProcessorPil", None) or transformers.MobileNetV2ImageProcessor

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


@pytest.mark.slow
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


# (preprocessor_config.json's settings, the input size they feed the model): a crop wider
# than high; one higher than wide and taller than the resized shorter side (transformers
# pads it with zeros); a resize to 96x128 without a crop (the aspect ratio lost)
NON_SQUARE = [
    (dict(size={"shortest_edge": 146}, crop_size={"height": 96, "width": 128}), (96, 128)),
    (dict(size={"shortest_edge": 111}, crop_size={"height": 128, "width": 96}), (128, 96)),
    (dict(size={"height": 96, "width": 128}, do_center_crop=False), (96, 128)),
    (dict(size=110, crop_size=96), (96, 96)),  # ints: the shorter side, a square crop
]


def test_a_non_square_crop_is_recorded_and_applied_as_transformers_image_processor_does(tmp_path, photo_paths):
    """The engine's preprocessing equals transformers' own on the photos, landscape and
    portrait, whose margins are odd on one side or the other (floored, as transformers
    does), and predict equals the transformers model on the processor's pixels. config.json
    keeps its image_size (224): what the processor feeds the model is what is recorded.
    (Sizes as ints, last: as transformers reads them from the file; its save_pretrained
    writes dicts.)"""
    from PIL import Image

    folder = tmp_path / "m"
    model = save(dict(depth_multiplier=0.35, num_labels=10), True, "safetensors", folder)
    images = [Image.open(p).convert("RGB") for p in photo_paths]
    for settings, size in NON_SQUARE:
        (folder / "preprocessor_config.json").write_text(json.dumps(
            dict(image_processor_type="MobileNetV2ImageProcessor", **settings)))
        processor = processor_class().from_pretrained(folder)  # the file both read
        engine = Engine.load(folder)
        assert engine.weights.size == size, settings
        pixels = processor(images=images, return_tensors="np")["pixel_values"]
        assert pixels.shape == (len(images), 3, *size)
        mine = np.stack([engine.preprocess(image) for image in images])
        np.testing.assert_allclose(mine, pixels.transpose(0, 2, 3, 1), atol=1e-5, err_msg=str(settings))
        some = [i for i, p in enumerate(photo_paths) if p.name in ("bird.bmp", "grace_hopper.bmp")]  # wide, tall
        with torch.no_grad():
            ref = model(torch.from_numpy(pixels[some])).logits.numpy()
        assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max(), "reference ignores its input"
        close(probabilities(engine.predict([photo_paths[i] for i in some], top=10), 10), softmax(ref))


def test_what_a_folder_leaves_out_is_read_as_transformers_reads_it(tmp_path, photo_paths):
    """config.json holding model_type alone (transformers' defaults: depth_multiplier 1.0,
    2 labels, tf_padding, layer_norm_eps 1e-3, image_size 224, ...) and a
    preprocessor_config.json naming its class alone (shorter side 256, crop 224x224,
    1/255, mean and std 0.5): the engine against transformers loading the same folder.
    The BatchNorm variances are near layer_norm_eps, so that its value shows."""
    folder = tmp_path / "m"
    model = randomized(transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config()), 0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(1e-3), m.weight.mul_(0.045)
    model.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "mobilenet_v2"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "MobileNetV2ImageProcessor"}))
    theirs = transformers.MobileNetV2ForImageClassification.from_pretrained(folder).eval()
    processor = processor_class().from_pretrained(folder)
    ws = convert(folder, tmp_path / "mnv2.h5")
    assert (ws.alpha, ws.classes, ws.padding, ws.size, ws.labels) == (1.0, 2, "same", (224, 224), None)
    engine = Engine.load(tmp_path / "mnv2.h5")
    x = np.random.default_rng(0).normal(0, 1, (2, 64, 80, 3)).astype(np.float32)
    x[1] = np.linspace(-1, 1, 64 * 80 * 3).reshape(64, 80, 3)  # unlike noise, whose pooled features vary little
    with torch.no_grad():
        ref = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
    close(engine.forward(x), ref)
    from PIL import Image
    images = [Image.open(p).convert("RGB") for p in photo_paths]
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(np.stack([engine.preprocess(image) for image in images]),
                               pixels.transpose(0, 2, 3, 1), atol=1e-5)


def test_a_narrow_config_with_its_defaults_left_out_runs_as_transformers(tmp_path):
    """depth_multiplier 0.35 and num_labels alone: min_depth, finegrained_output and the
    other keys checked against a narrow network are transformers' defaults."""
    folder = tmp_path / "m"
    save(dict(depth_multiplier=0.35, num_labels=3), True, "safetensors", folder)
    config = dict(model_type="mobilenet_v2", depth_multiplier=0.35, num_labels=3)
    (folder / "config.json").write_text(json.dumps(config))
    theirs = transformers.MobileNetV2ForImageClassification.from_pretrained(folder).eval()
    engine = Engine.load(folder)
    x = np.random.default_rng(1).normal(0, 1, (2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        ref = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()
    close(engine.forward(x), ref)


@pytest.mark.parametrize("image_size,recorded", [(None, (224, 224)), (96, (96, 96)), ([96, 128], (96, 128))])
def test_config_image_size_is_recorded_height_first(tmp_path, image_size, recorded):
    """Without preprocessor_config.json: image_size as transformers' MobileNetV2Config takes
    it (an int, or [height, width]); left out, its default 224."""
    folder = tmp_path / "m"
    save(dict(depth_multiplier=0.35, num_labels=3), True, "safetensors", folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("image_size")
    if image_size is not None:
        config["image_size"] = image_size
    (folder / "config.json").write_text(json.dumps(config))
    assert convert(folder, tmp_path / "mnv2.h5").size == recorded


@pytest.mark.parametrize("file,change,message", [
    ("config.json", dict(image_size="96x128"), r"image_size='96x128', expected an int, \[height, width\]"),
    ("config.json", dict(image_size=[96, 0]), r"image_size=\[96, 0\]"),
    ("preprocessor_config.json", dict(do_resize=False), "do_resize=false feeds each image at its own size"),
    ("preprocessor_config.json", dict(size={"height": 100, "width": 120}, crop_size={"height": 90, "width": 100}),
     "a resize to 100x120 then a centre crop of 90x100; the engine crops before it resizes"),
    ("preprocessor_config.json", dict(size={"shortest_edge": 0}), r"size=\[0, 0\]"),
    ("preprocessor_config.json", dict(crop_size={"height": 96}), r"crop_size=\{'height': 96\}"),
])
def test_sizes_the_engine_cannot_reproduce_are_refused_naming_the_setting(tmp_path, file, change, message):
    folder = tmp_path / "m"
    save(dict(depth_multiplier=0.35, num_labels=3), True, "safetensors", folder)
    if file == "preprocessor_config.json":  # else config.json's image_size is the size recorded
        processor_class()().save_pretrained(folder)
    settings = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**settings, **change}))
    with pytest.raises(WeightFileError, match=message):
        convert(folder, tmp_path / "mnv2.h5")
