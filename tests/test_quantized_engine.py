"""A quantized file run in integer arithmetic, against LiteRT running the same file.

Every activation equals the one LiteRT's reference kernels make (BUILTIN_REF, which the
format's arithmetic is defined by), byte for byte, on photos and random inputs of both
shared models; the top classes equal LiteRT's default interpreter's (XNNPACK). The
references come from LiteRT only, never from the engine.
"""
import numpy as np
import pytest
from PIL import Image

from mnv2engine import Engine, EngineError, InputError
from mnv2engine.arch import Architecture
from mnv2engine.weights.tflite import read_tflite

from conftest import require
from tflite_edit import engine_names, unpack

MODELS = ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite")
ARCH = Architecture(alpha=1.0, size=224, classes=1001)
PHOTOS = ("cat.bmp", "parrot.jpg", "grace_hopper.bmp", "hot_dog.jpg", "owl.jpg", "sunflower.bmp")


def litert(path, reference: bool):
    interpreter = require("ai_edge_litert.interpreter")
    kinds = interpreter.OpResolverType
    it = interpreter.Interpreter(model_path=str(path), experimental_preserve_all_tensors=reference,
                                 experimental_op_resolver_type=kinds.BUILTIN_REF if reference else kinds.AUTO)
    it.allocate_tensors()
    return it


def invoke(it, x: np.ndarray) -> np.ndarray:
    """One uint8 image [1, 224, 224, 3] through the interpreter; its output."""
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def photo(shared_data, name) -> np.ndarray:
    """The photo as the model's uint8 input: a plain bilinear resize (shared/data/README.md)."""
    image = Image.open(shared_data / "images" / name).convert("RGB").resize((224, 224), Image.BILINEAR)
    return np.asarray(image)[None]


def reference_logits(path, x: np.ndarray):
    """LiteRT's reference kernels run on x, and their integer logits as reals, scale * (q - zero)."""
    it = litert(path, reference=True)
    invoke(it, x)
    logits_op = engine_names(unpack(path.read_bytes()), ARCH)["classifier"]
    detail = next(d for d in it.get_tensor_details() if d["index"] == logits_op.outputs[0])
    scale, zero = detail["quantization"]
    return it, (it.get_tensor(logits_op.outputs[0]).astype(np.float32).reshape(1, -1) - zero) * np.float32(scale)


@pytest.fixture(scope="module", params=MODELS)
def model(request, shared_data):
    path = shared_data / "models" / request.param
    return path, Engine.load(path)


def test_a_quantized_file_runs_in_integer_by_default(model):
    path, engine = model
    assert engine.quantized and "quantized=True" in repr(engine)
    assert not Engine.load(path, quantized=False).quantized


@pytest.mark.parametrize("source,t", [("cat.bmp", 1), ("parrot.jpg", 1), ("random 0", 1), ("random 1", 1),
                                      ("parrot.jpg", 4), ("random 1", [1, 2, 3, 4, 5, 6] * 2 + [2, 3, 4, 5, 6])])
def test_every_activation_is_litert_reference_kernels_byte_for_byte(model, shared_data, source, t):
    """Materialized (t=1), every activation; sliced, every one that exists whole (a
    sliced block's expansion and depthwise exist a slice at a time)."""
    path, engine = model
    if t != 1:
        engine = Engine.load(path, t=t)
    if source.startswith("random"):
        x = np.random.default_rng(int(source[-1])).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    else:
        x = photo(shared_data, source)
    it = litert(path, reference=True)
    invoke(it, x)
    ops = engine_names(unpack(path.read_bytes()), ARCH)
    got = engine.intermediates(x)
    whole = set(ops) - {"softmax"} - ({f"{b.name}/{kind}" for b in ARCH.blocks for kind in ("expand", "depthwise")}
                                     | {"stem"} if t != 1 else set())
    assert whole <= set(got) <= set(ops), "an activation of the file is missing"
    for name, want_op in ops.items():
        if name not in got:
            continue
        want = it.get_tensor(want_op.outputs[0])
        mine = got[name]
        assert mine.dtype == want.dtype, name
        assert np.array_equal(mine.reshape(want.shape), want), \
            f"{name}: {np.count_nonzero(mine.reshape(want.shape) != want)} of {want.size} values differ"


def test_the_logits_are_the_files_integers_as_reals(model, shared_data):
    """forward returns scale * (q - zero) of the integer logits, from float, uint8 and int8
    input alike (float: quantized with the file's input scale and zero point)."""
    path, engine = model
    x = photo(shared_data, "bird.bmp")
    it, want = reference_logits(path, x)
    assert np.array_equal(engine.forward(x), want)
    assert np.array_equal(engine.forward((x.astype(np.int16) - 128).astype(np.int8)), want)
    inp = next(d for d in it.get_input_details())
    s, z = inp["quantization"]
    real = ((x.astype(np.float32) - z) * np.float32(s)).astype(np.float32)  # quantizes back to x exactly
    assert np.array_equal(engine.forward(real), want)


@pytest.mark.parametrize("kw", [dict(), dict(t=4), dict(rows=True), dict(rows=True, t=4), dict(threads=2),
                                dict(threads=3), dict(threads=2, t=[1, 2, 3, 4, 5, 6] * 2 + [2, 3, 4, 5, 6]),
                                dict(threads=2, rows=True)], ids=str)
def test_forward_in_one_call_is_litert_reference_kernels_in_every_mode(model, shared_data, kw):
    """forward runs the whole network in one call (kernels/qnetwork.py), an image shared
    by the threads where the batch is smaller than them: the logits are the reference
    kernels' bytes in every evaluation and at every thread count."""
    path, _ = model
    engine = Engine.load(path, **kw)
    x = photo(shared_data, "owl.jpg")
    assert np.array_equal(engine.forward(x), reference_logits(path, x)[1])
    assert engine.memory_report(x=x).schedule.arenas == 1  # one image: one arena, whatever the threads


@pytest.mark.parametrize("threads", [1, 2])
def test_a_headless_integer_engine_returns_the_reference_kernels_pooled_features(model, shared_data, threads):
    """The file without its classifier: forward gives the pool's integers as reals."""
    path, _ = model
    ws = read_tflite(path)
    ws.classes = 0
    del ws.layers["classifier"]
    for table in (ws.quantization.layers, ws.quantization.activations):
        for name in ("classifier", "softmax"):
            table.pop(name, None)
    x = photo(shared_data, "owl.jpg")
    it = litert(path, reference=True)
    invoke(it, x)
    pool = engine_names(unpack(path.read_bytes()), ARCH)["pool"]
    detail = next(d for d in it.get_tensor_details() if d["index"] == pool.outputs[0])
    scale, zero = detail["quantization"]
    want = (it.get_tensor(pool.outputs[0]).astype(np.float32).reshape(1, -1) - zero) * np.float32(scale)
    assert np.array_equal(Engine(ws, threads=threads).forward(x), want)


def test_top5_of_every_photo_is_litert_defaults(model, shared_data):
    """The top-1 and the top-5 of LiteRT's default interpreter (XNNPACK), and the
    probabilities (the file's integer softmax) of its reference kernels within 1 LSB
    (1/256). XNNPACK's own kernels round a few values differently from the reference."""
    path, engine = model
    default, reference = litert(path, reference=False), litert(path, reference=True)
    scale, zero = default.get_output_details()[0]["quantization"]
    for name in PHOTOS:
        x = photo(shared_data, name)
        fast = (invoke(default, x)[0].astype(np.float32) - zero) * scale
        exact = (invoke(reference, x)[0].astype(np.float32) - zero) * scale
        got = engine.classify(x, top=5)[0]
        assert got[0][0] == np.argmax(fast), name
        fifth = np.sort(fast)[-5]  # probabilities are multiples of 1/256: the fifth place may be a tie
        assert all(fast[i] >= fifth - 1 / 256 for i, _, _ in got), (name, got, fifth)
        for i, _, p in got:
            assert abs(p - exact[i]) <= 1 / 256 + 1e-6, (name, i, p, exact[i])


def test_integer_and_float_agree_on_the_photos(model, shared_data):
    path, engine = model
    floats = Engine.load(path, quantized=False)
    for name in PHOTOS[:3]:
        image = shared_data / "images" / name
        assert engine.predict(image, top=1)[0][0] == floats.predict(image, top=1)[0][0], name


def test_what_integer_cannot_run_is_refused_by_name(model, tmp_path):
    path, _ = model
    assert Engine.load(path, rows=True).quantized  # rows run in integer too (test_quantized_rows.py)
    with pytest.raises(EngineError, match="this one is float"):
        Engine.random(alpha=0.35, size=64, classes=10).__class__(
            Engine.random(alpha=0.35, size=64, classes=10).weights, quantized=True)
    with pytest.raises(EngineError, match="quantized must be"):
        Engine.load(path, quantized="yes")
    with pytest.raises(InputError, match="float32, uint8 or int8"):
        Engine.load(path).forward(np.zeros((1, 224, 224, 3), np.int16))
    with pytest.raises(InputError, match="float32 input"):
        Engine.load(path, quantized=False).forward(np.zeros((1, 224, 224, 3), np.uint8))


@pytest.mark.parametrize("t", [1, 4])
def test_the_memory_is_the_int8_planners(model, t):
    """Activations at one byte (a sliced block's projection sums at four), one image at a
    time: tracemalloc's peak over a forward agrees with memory_report, which counts each
    buffer in its own bytes."""
    from conftest import forward_peak
    path, _ = model
    engine = Engine.load(path, t=t)
    x = np.random.default_rng(5).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    report = engine.memory_report(x=x)
    if t == 1:
        floats = Engine.load(path, quantized=False).memory_report(1)
        assert report.arena_bytes * 3.5 < floats.arena_bytes  # the same plan at 1 byte, not 4
    else:
        assert any(buf.dtype == "int32" for buf in report.plan.buffers)
    measured = forward_peak(engine, x)
    assert abs(measured - report.peak_bytes) <= 0.05 * report.peak_bytes + 16 * 1024, (measured, report.peak_bytes)


def test_the_cli_runs_integer_by_default_and_float_with_its_flag(model, capsys):
    from mnv2engine.cli import main
    path, _ = model
    for flags in ([], ["--float"]):
        assert main(["demo", "--weights", str(path), "--runs", "1", *flags]) == 0
        out = capsys.readouterr().out
        assert ("quantized=True" in out) == (not flags), out


@pytest.mark.parametrize("kw", [dict(threads=2), dict(threads=3, rows=True), dict(threads=2, t=4)], ids=str)
def test_threads_split_a_batch_with_the_same_bytes(model, kw):
    """Each thread takes its share of the images, in an arena of its own: the same
    integers as one thread (which equal LiteRT's reference kernels above), and memory_report
    counts an arena per thread."""
    path, one = model
    engine = Engine.load(path, **kw)
    x = np.random.default_rng(9).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    assert np.array_equal(engine.forward(x), one.forward(x))
    assert engine.memory_report(x=x).schedule.arenas == kw["threads"]


def test_a_failing_thread_never_hangs_an_image_shared_in_integer(model, monkeypatch):
    """A thread that fails on its share of an image gives the pass up: the other leaves
    its barrier, the caller raises an EngineError naming the fault, and the next call is right."""
    import threading
    from mnv2engine.quantized import IntegerNetwork
    path, one = model
    engine = Engine.load(path, threads=2)
    x = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    want = one.forward(x)
    assert np.array_equal(engine.forward(x), want)
    real = IntegerNetwork.forward

    def failing(self, image, plan, tables, arena, out, tid=0, threads=1, sync=None):
        if tid == 1:
            raise RuntimeError("injected fault on thread 1")
        real(self, image, plan, tables, arena, out, tid, threads, sync)
    monkeypatch.setattr(IntegerNetwork, "forward", failing)
    box = {}

    def call():
        try:
            engine.forward(x)
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            box["error"] = e
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "hung"
    assert isinstance(box.get("error"), EngineError) and "injected fault" in str(box["error"]), box
    monkeypatch.undo()
    assert np.array_equal(engine.forward(x), want)
