"""The public API: Engine.load / Engine.random, forward, predict, memory_report."""
from __future__ import annotations

import dataclasses
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import preprocess
from .arch import MIN_SIZE, Architecture
from .budget import MAX_MEMORY, Budget, Schedule, checked
from .errors import EngineError, InputError
from .memory import allocate, view
from .model import block_weights, fold_all, packed
from .plan import build_plan, resolve_t, slice_bounds
from .program import compile_plan, gather
from .quantized import IntegerNetwork, dequantize, integer_input
from .recent import Recent
from .spread import spread
from .kernels.finite import all_finite
from .kernels.network import forward, run_block, run_head
from .kernels.pipeline import pipeline
from .kernels.simd import LANES
from .kernels.sync import RUNNING, STATE, new_sync

PLANS_KEPT = 8  # plans (with their compiled programs) per (batch, height, width, threads)
SIZES_KEPT = 4  # input sizes whose architecture and sub-batch budget are kept


@dataclasses.dataclass(frozen=True)
class _AtSize:
    """What depends on the input size: the layers' shapes, the paddings, the sub-batches."""
    arch: Architecture
    stem_pads: tuple
    dw_pads: list
    budget: Budget


class Engine:
    """A MobileNetV2 ready to run at any input size: folded weights, and a plan per
    (batch, height, width, threads), made on first use and kept in a bounded cache.

    MobileNetV2 is fully convolutional, so one set of weights runs any H, W >= 32; the
    size recorded in the weight file (`arch.size`) is only the default of predict's
    preprocessing and of memory_report.

    t: channel slices of each expansion (an int, or one per block); 1 = materialized.
    rows: the lowest memory: the stem and the first blocks run as one row pipeline, each
        block handing every output row to the next at once, so none of their tensors
        exists whole (kernels/pipeline.py); later blocks stream row by row through a
        3-row line buffer where the peak needs it, and run whole elsewhere (see
        plan.build_plan). 1.0/224, batch 1: 0.47 MiB (t=1: 5.75 MiB, t=4: 2.50).
    threads: a batch of at least this many images is split across this many threads,
        each with its own arena; a smaller batch (one image) is shared by the threads,
        each computing its share of every layer. The kernels release the GIL. Calls from
        several threads at once are safe: every call has its own arena (a call sharing an
        image takes the one the last such call left, when no other call has it: _arena).
    max_memory: the bytes of activations one forward call may hold, whatever the batch;
        a larger batch runs in sub-batches (budget.py). The returned logits are extra.
    quantized: run a quantized file (TFLite int8 or uint8) in integer arithmetic, exactly
        as its format defines it (the default for such a file), or, False, in float32 on
        its dequantized weights. In integer, the evaluation is materialized, sliced (t) or
        rows (the integer row pipeline and row-streamed blocks, kernels/qpipeline.py and
        qblock.py; 1.0/224: 0.14 MiB), one image at a time, the whole network in one call
        (kernels/qnetwork.py); threads split a batch, or share an image as in float.
    """

    def __init__(self, weightset, t=None, rows: bool = False, threads: int = 1, max_memory: int = MAX_MEMORY,
                 quantized: bool | None = None):
        self.weights = weightset
        self.quantized = _quantized(weightset, quantized, t, rows)
        self.arch, self.convs = fold_all(weightset)
        self.t = resolve_t(self.arch, t)
        lanes = LANES if rows else 1  # rows: slices on whole vectors (slice_bounds)
        bounds = [slice_bounds(b.hidden, tb, lanes) for b, tb in zip(self.arch.blocks, self.t)]
        self._weights = gather(block_weights(self.arch, self.convs, bounds), packed(self.convs["head"]),
                               None if self.arch.headless else packed(self.convs["classifier"]))
        self.blocks = self._weights.blocks
        if not isinstance(rows, (bool, np.bool_)):
            raise EngineError(f"rows must be True or False, got {rows!r}")
        self.rows = bool(rows)
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise EngineError(f"threads must be a positive integer, got {threads!r}")
        self.threads = int(threads)
        self.labels = weightset.labels or [f"class {i}" for i in range(self.arch.classes)]
        self._plans = Recent(PLANS_KEPT)   # (batch, H, W, threads) -> (plan, program)
        self._sizes = Recent(SIZES_KEPT)   # (H, W) -> _AtSize
        self._planning = threading.Lock()
        # the threads - 1 helpers that share an image with the calling thread (none start
        # until first used)
        self._helpers = ThreadPoolExecutor(self.threads - 1, "mnv2-helper") if self.threads > 1 else None
        # Shared-image calls take turns: with 2+ helpers, two calls at once could each hold
        # a helper the other waits for at a barrier.
        self._sharing_lock = threading.Lock()
        self._spare = None  # the arena of the last pass that shared an image (_arena)
        self._max_memory = checked(max_memory)
        self._integer = None
        if self.quantized:
            self._integer_bounds = [slice_bounds(b.hidden, tb) for b, tb in zip(self.arch.blocks, self.t)]
            self._integer = IntegerNetwork(weightset.quantization, self.arch, self._integer_bounds)
        if self.quantized:
            self._integer_plan(self.arch.size)  # refuse a budget too small for one image now
        else:
            self._at(self.arch.size).budget.schedule(1, self.threads)

    @classmethod
    def load(cls, path, t=None, rows: bool = False, threads: int = 1, max_memory: int = MAX_MEMORY,
             quantized: bool | None = None) -> "Engine":
        """Load an mnv2.h5 file (or any weight file the converters read)."""
        from .weights import read_any
        return cls(read_any(path), t=t, rows=rows, threads=threads, max_memory=max_memory, quantized=quantized)

    @classmethod
    def random(cls, alpha=1.0, size=224, classes=1000, seed=0, padding="same", t=None,
               rows: bool = False, threads: int = 1, max_memory: int = MAX_MEMORY) -> "Engine":
        """A seeded, randomly initialised network: for benchmarks and demos."""
        from .weights.random import random_weightset
        return cls(random_weightset(alpha, size, classes, seed, padding), t=t, rows=rows, threads=threads,
                   max_memory=max_memory)

    @property
    def max_memory(self) -> int:
        return self._max_memory

    def __repr__(self):
        a = self.arch
        return (f"Engine(alpha={a.alpha}, size={a.size}, classes={a.classes}, padding={a.padding!r}, "
                f"t={self.t if len(set(self.t)) > 1 else self.t[0]}, rows={self.rows}"
                f"{', quantized=True' if self.quantized else ''})")

    # -- running -------------------------------------------------------------------
    def plan(self, batch: int = 1, threads: int = 1, size=None):
        """The buffers of a forward call on `batch` images of `size` (default: the
        recorded size), each shared by `threads` threads."""
        return self._planned(batch, self.input_size(size), threads)[0]

    def _planned(self, batch: int, size: tuple[int, int], threads: int):
        """(plan, program.Program), made on first use; concurrent first calls make it once."""
        def make():
            at = self._at(size)
            plan = build_plan(at.arch, [w.bounds for w in self.blocks], self.rows, batch, threads)
            return plan, compile_plan(plan, self._weights, at.stem_pads, at.dw_pads)
        with self._planning:
            return self._plans.get((batch, *size, threads), make)

    def _at(self, size: tuple[int, int]) -> _AtSize:
        def make():
            arch = dataclasses.replace(self.arch, size=size)
            bounds = [w.bounds for w in self.blocks]
            # rows=True takes a batch one image at a time: one image's arena whatever the
            # batch, and faster than a batch's plan, whose pipeline would reach blocks whose
            # weights leave the cache between rows.
            budget = Budget(self._max_memory, lambda images, sharing: build_plan(
                arch, bounds, self.rows, images, sharing).arena_bytes, image_bytes=size[0] * size[1] * 3 * 4,
                most=1 if self.rows else None)
            return _AtSize(arch, arch.pads(size, 2), [arch.pads(b.in_size, b.stride) for b in arch.blocks], budget)
        return self._sizes.get(size, make)

    def input_size(self, size=None) -> tuple[int, int]:
        """An input size as (height, width): None is the recorded size, an int a square."""
        if size is None:
            return self.arch.size
        return Architecture(alpha=self.arch.alpha, size=size, classes=0).size  # checks it, naming it

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 NHWC batch [N, H, W, 3] -> logits [N, classes]
        (pooled features [N, last_channels] for a headless model).

        x is read where it is, not copied, when it is float32 in the machine's byte
        order, C-contiguous, aligned and writeable (reads_in_place); any other float32
        array (strided, big-endian, read-only) is copied, one sub-batch at a time.

        Sub-batches of at most schedule.sub_batch images, within max_memory: all threads
        on each sub-batch in turn (a batch smaller than the threads), or each thread on
        its share of the batch, one sub-batch after another.

        A quantized engine also takes the file's integers: uint8 (a uint8 file's values, or
        an int8 file's plus 128) or int8; float input is quantized with the file's input
        scale and zero point. It returns the integer logits as reals, scale * (q - zero)."""
        x = self._check_input(x)
        if self.quantized:
            return dequantize(self._forward_integer(x), self._integer.output)
        with self._planning:
            budget = self._at(x.shape[1:3]).budget
        s = budget.schedule(len(x), self.threads, copied=not self.reads_in_place(x))
        out = self._output(len(x))
        if s.sharing > 1:
            for lo in range(0, len(x), s.sub_batch):
                self._run(x[lo:lo + s.sub_batch], out[lo:lo + s.sub_batch], s.sharing)
            return out
        stop = new_sync(1)  # the pass's state: a failure on one thread stops the others
        shares = [(len(x) * i // s.arenas, len(x) * (i + 1) // s.arenas) for i in range(s.arenas)]
        spread(self._helpers, self._run_share, [(x, out, lo, hi, s.sub_batch, stop) for lo, hi in shares], stop)
        return out

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of every block's output, the pooled features and the logits: to find
        which layer disagrees with a reference, not just that the logits do. The whole
        batch at once, outside max_memory: it returns every activation anyway."""
        x = self._check_input(x)
        if self.quantized:  # the activations by the file's names, in its own integers
            out = {}
            self._forward_integer(x, lambda name, a: out.setdefault(name, []).append(self._file_integers(name, a)))
            return {name: np.stack(arrays) for name, arrays in out.items()}
        out = {"logits": self._output(len(x))}
        self._run(x, out["logits"], 1, observe=lambda name, a: out.__setitem__(name, a.copy()))
        return out

    def _forward_integer(self, x: np.ndarray, observe=None) -> np.ndarray:
        """The integer network on a checked batch, an image at a time (each converted to
        the kernels' int8 as it comes): its int8 outputs [N, width]. With threads, each
        takes its share of the images, with its own arena; a batch smaller than the
        threads has each image shared by all of them (observe: one thread)."""
        out = np.empty((len(x), self._integer.output_width), np.int8)
        if observe:
            plan, pads, _ = self._integer_plan(x.shape[1:3])
            arena = self._arena(plan.arena_bytes, 1, shared=False)
            for n, image in self._integer_images(x, 0, len(x)):
                self._integer.run(image, plan, *pads, arena, out[n], observe)
            return out
        if len(x) < self.threads:
            self._integer_shared(x, out)
            return out
        arenas = min(self.threads, len(x))
        if arenas == 1:
            self._integer_share(x, out, 0, len(x))
            return out
        stop = new_sync(1)  # a failure on one thread stops the others between images
        shares = [(len(x) * i // arenas, len(x) * (i + 1) // arenas) for i in range(arenas)]
        spread(self._helpers, self._integer_share, [(x, out, lo, hi, stop) for lo, hi in shares], stop)
        return out

    def _integer_share(self, x, out, lo, hi, stop=None):
        """Images lo..hi of x into out, on this thread, in an arena of its own."""
        plan, _, tables = self._integer_plan(x.shape[1:3])
        arena = self._arena(plan.arena_bytes, 1, shared=False)
        for n, image in self._integer_images(x, lo, hi):
            if stop is not None and stop[STATE] != RUNNING:
                return
            self._integer.forward(image, plan, tables, arena, out[n])

    def _integer_shared(self, x, out):
        """Each image of x shared by all the threads, in one arena."""
        plan, _, tables = self._integer_plan(x.shape[1:3])
        arena = self._arena(plan.arena_bytes, 1, shared=True)
        with self._sharing_lock:
            for n, image in self._integer_images(x, 0, len(x)):
                sync = new_sync(self.threads)
                spread(self._helpers, self._integer.forward,
                       [(image, plan, tables, arena, out[n], tid, self.threads, sync) for tid in range(self.threads)],
                       sync, joined=True)
        self._spare = arena

    def _integer_images(self, x, lo, hi):
        """(n, image n of x as the kernels' int8) for n in lo..hi, each converted as it
        comes into one buffer (none for int8 already C-contiguous: read in place)."""
        copy = None if x.dtype == np.int8 and x.flags.c_contiguous else np.empty(x.shape[1:], np.int8)
        for n in range(lo, hi):
            yield n, integer_input(x[n], self._integer.activations["input"], copy)

    def _integer_plan(self, size):
        """The int8 plan of one image at `size`, the paddings, and the integer forward's
        tables of it (IntegerNetwork.tables)."""
        def make():
            at = self._at(size)
            plan = build_plan(at.arch, self._integer_bounds, self.rows, 1, dtype="int8")
            if plan.arena_bytes > self._max_memory:
                raise EngineError(f"one image at {size[0]}x{size[1]} needs {plan.arena_bytes:,} bytes of activations, "
                                  f"over max_memory={self._max_memory:,}")
            return plan, (at.stem_pads, at.dw_pads), self._integer.tables(plan, at.stem_pads, at.dw_pads)
        with self._planning:
            return self._plans.get(("int8", *size), make)

    def _file_integers(self, name: str, a: np.ndarray) -> np.ndarray:
        """A copy of int8 kernel values as the file's own integers (uint8: + 128)."""
        if self._integer.activations[name].dtype == "uint8":
            return (a.astype(np.int16) + 128).astype(np.uint8)
        return a.copy()

    @staticmethod
    def reads_in_place(x: np.ndarray) -> bool:
        """Whether forward reads x where it is (else it copies it): float32 in the
        machine's byte order, C-contiguous and aligned, as the kernels read it; and
        writeable, since Numba types a read-only array apart (it would compile every
        kernel again for it). The kernels never write to it."""
        return x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned and x.flags.writeable

    @classmethod
    def _finite(cls, x: np.ndarray) -> bool:
        """No NaN or infinity in x: one compiled pass where the kernels can read x in place
        (kernels/finite.py), else NumPy's min and max (which see every NaN and infinity);
        neither allocates anything that grows with the batch."""
        if cls.reads_in_place(x):
            return all_finite(x.reshape(-1))
        return bool(np.isfinite(x.min()) and np.isfinite(x.max()))

    def _check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise InputError(f"forward expects a numpy array, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[3] != 3 or x.shape[0] < 1 or min(x.shape[1:3]) < MIN_SIZE:
            raise InputError(f"forward expects a float32 NHWC batch of shape (N, H, W, 3) with H, W >= "
                             f"{MIN_SIZE}, got shape {x.shape}")
        if self.quantized and x.dtype in (np.uint8, np.int8):
            return x
        if x.dtype.kind != "f" or x.dtype.itemsize != 4:
            also = ", uint8 or int8" if self.quantized else ""
            raise InputError(f"forward expects float32{also} input, got {x.dtype}")
        if not self._finite(x):
            raise InputError("input contains NaN or infinite values")
        return x

    def _output(self, images: int) -> np.ndarray:
        width = self.arch.last_channels if self.arch.headless else self.arch.classes
        try:
            return np.empty((images, width), np.float32)
        except MemoryError:
            raise EngineError(f"the output of {images:,} images ({images * width * 4:,} bytes) does not fit "
                              "in memory: pass fewer images per call") from None

    def _run_share(self, x, out, lo, hi, images, stop):
        """Images lo..hi of x into out, `images` at a time, on this thread alone; stops
        between sub-batches once the pass is given up (a failure on another thread)."""
        for at in range(lo, hi, images):
            if stop[STATE] != RUNNING:
                return
            self._run(x[at:min(at + images, hi)], out[at:min(at + images, hi)], 1)

    def _run(self, x: np.ndarray, out: np.ndarray, threads: int, observe=None):
        """One forward pass on the batch x into out, each image shared by `threads` threads."""
        plan, program = self._planned(x.shape[0], x.shape[1:3], threads)
        w = self._weights
        arena = self._arena(plan.arena_bytes, x.shape[0], shared=threads > 1)
        image = x if self.reads_in_place(x) else np.array(x, np.float32, order="C")  # byte order, strides
        floats = arena.view(np.float32)
        sync = new_sync(threads)
        state = np.zeros((threads, 2, len(program.blocks)), np.int64)  # the row pipeline's counters
        tables = (floats, w.params, w.ints, program.blocks)
        if observe:  # block by block, to show each output before the next block overwrites it
            if plan.piped:  # its outputs never exist whole: the pipeline copies each row out
                shapes = [(x.shape[0], *step.block.out_size, step.block.cout) for step in plan.steps[:plan.piped]]
                taps = np.empty(sum(math.prod(shape) for shape in shapes), np.float32)
                pipeline(*tables, image, state, 0, 1, program.compiled.narrow, taps)
                at = 0
                for step, shape in zip(plan.steps, shapes):
                    observe(step.block.name, taps[at:at + math.prod(shape)].reshape(shape))
                    at += math.prod(shape)
            for i, step in enumerate(plan.steps[plan.piped:], plan.piped):
                run_block(*tables, program.cuts, state, image, i, 0, 1, sync, *program.compiled)
                observe(step.block.name, view(arena, step.y))
            run_head(floats, w.params, program.head, 0, 1, sync, out)
            observe("pooled", view(arena, plan.pooled))
        elif threads == 1:
            forward(*tables, program.head, program.cuts, state, image, out, 0, 1, sync, *program.compiled)
        else:
            with self._sharing_lock:
                spread(self._helpers, forward, [(*tables, program.head, program.cuts, state, image, out, tid, threads,
                                                  sync, *program.compiled) for tid in range(threads)], sync, joined=True)
        if self.arch.headless:
            out[:] = view(arena, plan.pooled)
        if threads > 1:
            self._spare = arena  # done with it: the next shared pass may take it

    def _arena(self, nbytes: int, images: int, shared: bool) -> np.ndarray:
        """The bytes of a pass's activations. One arena per pass, dropped on return: calls
        are independent, and tracemalloc sees exactly this pass's activation memory.

        Except for an image shared by threads: its pass takes the arena the last shared
        pass left (`_spare`) where it is large enough. Its helpers let go of their
        arguments just after it returns, so a new arena would alternate between two
        places, each call finding its own out of cache (t=1 on 2 threads: 4-7% slower)."""
        spare = None
        if shared:
            with self._sharing_lock:  # two calls at once never take the same one
                spare, self._spare = self._spare, None
        if spare is not None and spare.nbytes >= nbytes:
            return spare[:nbytes]
        try:
            return allocate(nbytes)
        except MemoryError:
            raise EngineError(f"could not allocate {nbytes:,} bytes of activations for {images} images "
                              f"(max_memory={self.max_memory:,}): lower max_memory") from None

    # -- images --------------------------------------------------------------------
    def predict(self, images, top: int = 5, size=None, crop: bool = True):
        """Top classes of one image or a list of them.

        An image is a path, a PIL image or an HWC uint8 array, cropped as the weight file
        records (crop=False: the whole image) and resized to `size` (default: the
        recorded size). Returns, per image, a list of (index, label, probability); a
        single image gives a single list.
        """
        single = not isinstance(images, (list, tuple))
        self.check_top(top)
        size = self.input_size(size)
        batch = np.stack([self.preprocess(image, size, crop) for image in ([images] if single else images)])
        results = self.classify(batch, top)
        return results[0] if single else results

    def preprocess(self, image, size=None, crop: bool = True) -> np.ndarray:
        """One image as the network's float32 [H, W, 3] input at `size` (default: the
        recorded size), cropped and scaled as the weight file says; crop=False resizes
        the whole image."""
        ws = self.weights
        return preprocess.to_input(image, self.input_size(size), ws.scale, ws.offset,
                                   ws.crop if crop else "none", ws.crop_fraction)

    def classify(self, batch: np.ndarray, top: int = 5):
        """Per image of a preprocessed batch, the top (index, label, probability)."""
        self.check_top(top)
        results = []
        if self.quantized and self._integer.softmax is not None:  # the file's own softmax
            probabilities = self._integer.probabilities(self._forward_integer(self._check_input(batch)))
        else:
            probabilities = softmax(self.forward(batch))
        for p in probabilities:
            idx = np.argsort(-p, kind="stable")[:top]
            results.append([(int(i), self.labels[i], float(p[i])) for i in idx])
        return results

    def check_top(self, top):
        """Refuse a headless model or a top outside 1..classes, naming the range."""
        if self.arch.headless:
            raise EngineError("this model is headless (no classifier): use forward() for features")
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= self.arch.classes:
            raise EngineError(f"top must be an integer from 1 to {self.arch.classes}, got {top!r}")

    def memory_report(self, batch: int = 1, size=None, x=None):
        """The planner's buffers of one forward call on `batch` images of `size` (default:
        the recorded size): those of one sub-batch, and how many sub-batches and arenas
        the call takes. The engine's own memory: the caller's input is read in place.
        x: the batch that forward will be given (its shape sets batch and size); the
        report then says whether forward copies it, and counts the copy."""
        from .report import MemoryReport
        if x is not None:
            x = self._check_input(x)
            batch, size = len(x), x.shape[1:3]
        size = self.input_size(size)
        if self.quantized:  # one image at a time per thread, each converted to int8 as it comes (unless it is)
            copied = x is None or x.dtype != np.int8 or not x.flags.c_contiguous
            return MemoryReport(self._integer_plan(size)[0], Schedule(batch, 1, min(self.threads, batch), 1),
                                self.max_memory, input_copied=copied)
        with self._planning:
            budget = self._at(size).budget
        copied = x is not None and not self.reads_in_place(x)
        s = budget.schedule(batch, self.threads, copied)
        return MemoryReport(self.plan(s.sub_batch, s.sharing, size), s, self.max_memory, input_copied=copied)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _quantized(weightset, quantized, t, rows) -> bool:
    """Whether the engine runs in integer: the file's own arithmetic by default."""
    if quantized is None:
        quantized = weightset.quantization is not None
    if not isinstance(quantized, (bool, np.bool_)):
        raise EngineError(f"quantized must be True, False or None, got {quantized!r}")
    if quantized and weightset.quantization is None:
        raise EngineError("quantized=True needs a quantized model (a TFLite int8 or uint8 file); this one is float")
    return bool(quantized)
