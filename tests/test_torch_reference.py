"""The whole network against a PyTorch MobileNetV2 holding the same weights.

torch state_dict -> `mnv2engine.convert` -> mnv2.h5 -> Engine: logits, pooled features and
every block's output must match, so a failure names the block that broke.
"""
import numpy as np
import pytest
from PIL import Image

from mnv2engine import Engine

from conftest import close, probabilities, require, softmax
from test_crop import recipe

torch = require("torch")  # the reference: without torch these tests skip (under CI they fail)
from torch_reference import reference_and_engine, run_with_blocks

# alpha 0.35 / 1.0 / 1.4, sizes 96 / 224 / odd, batch 1 and 3, with and without the top
CASES = [(0.35, 96, 3, 1000), (1.0, 224, 1, 1000), (1.4, 113, 3, 10), (1.0, 97, 1, 0)]


@pytest.mark.parametrize("alpha,size,batch,classes", CASES)
def test_network_matches_pytorch(tmp_path, alpha, size, batch, classes):
    model, engine = reference_and_engine(tmp_path, alpha, size, classes, seed=int(alpha * 100) + size)
    assert engine.arch.alpha == alpha and engine.arch.padding == "symmetric"
    x = np.random.default_rng(size).uniform(-1, 1, (batch + 1, size, size, 3)).astype(np.float32)
    ref = run_with_blocks(model, x)
    # The comparison proves nothing if the reference maps every input to the same output.
    final = ref["pooled"] if classes == 0 else ref["logits"]
    assert np.abs(final[0] - final[1]).max() > 0.05 * np.abs(final).max()

    got = engine.intermediates(x[:batch])
    for name in [f"block{i}" for i in range(17)] + ["pooled"]:
        close(got[name], ref[name][:batch])
    close(got["logits"], final[:batch])
    close(engine.forward(x[:batch]), final[:batch])


# t=4 at alpha 0.75: block 1's 96 channels in slices of 24, packed by pairs (pairs.py)
@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(rows=True), dict(t=3), dict(t=4)], ids=str)
def test_one_image_shared_by_two_threads_matches_pytorch(tmp_path, kw):
    model, engine = reference_and_engine(tmp_path, 0.75, 99, 10, seed=3)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 99, 99, 3)).astype(np.float32)
    want = run_with_blocks(model, x)["logits"]
    close(Engine(engine.weights, threads=2, **kw).forward(x), want)


# torchvision's ImageNet recipe, written out here rather than taken from weights/:
# transforms.ToTensor (pixel / 255), then Normalize with these means and deviations.
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)


def torchvision_eval(path, size):
    """torchvision's ImageNet evaluation preset (test_crop.recipe, from torchvision's code):
    Resize(size / 0.875) of the shorter side, bilinear, then CenterCrop(size); `size` an
    int or (height, width)."""
    height, width = (size, size) if isinstance(size, int) else size
    return recipe(np.asarray(Image.open(path).convert("RGB")), "shorter-side", 0.875, height, width)


def test_predict_on_photos_matches_pytorch_with_torchvisions_preprocessing(tmp_path, photo_paths):
    """The engine gets the file names; PyTorch gets the photos as torchvision's evaluation
    preset prepares them (the recipe a torchvision file records)."""
    size = 160
    model, engine = reference_and_engine(tmp_path, 0.5, size, 1000, seed=7)
    assert (engine.weights.crop, engine.weights.crop_fraction) == ("shorter-side", 0.875)
    pixels = [torchvision_eval(p, size) for p in photo_paths]
    x = np.stack([(p.astype(np.float32) / 255 - TORCHVISION_MEAN) / TORCHVISION_STD for p in pixels])
    ref = run_with_blocks(model, x)["logits"]
    close(probabilities(engine.predict(photo_paths, top=1000), 1000), softmax(ref))


def test_a_non_square_size_matches_pytorch_from_photo_to_logits(tmp_path, photo_paths):
    """A size given as (height, width), odd by even: recorded so, each axis padded by its
    own size, the photos cropped by it (the longer input side sets the resize)."""
    size = (97, 128)
    model, engine = reference_and_engine(tmp_path, 0.35, size, 10, seed=11)
    assert engine.arch.size == size and engine.weights.size == size
    pixels = [torchvision_eval(p, size) for p in photo_paths]
    assert pixels[0].shape == size + (3,)
    x = np.stack([(p.astype(np.float32) / 255 - TORCHVISION_MEAN) / TORCHVISION_STD for p in pixels])
    ref = run_with_blocks(model, x)
    assert np.abs(ref["logits"][0] - ref["logits"][1]).max() > 0.05 * np.abs(ref["logits"]).max()
    got = engine.intermediates(x[:2])
    for name in [f"block{i}" for i in range(17)]:
        close(got[name], ref[name][:2])
    close(probabilities(engine.predict(photo_paths, top=10), 10), softmax(ref["logits"]))
