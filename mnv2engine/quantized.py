"""A quantized file's arithmetic, as the integer kernels take it.

Every activation is held as int8. A uint8 file runs shifted by -128 (its values, zero
points and clamp bounds): conv, depthwise, add and requantization are then the same map
(docs/int8_arithmetic.md), and one set of kernels serves both files. The multipliers are
made as TFLite's op kernels make them in Prepare, so that every layer's output equals its
reference kernels' byte for byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .arch import Architecture
from .errors import EngineError, WeightFileError
from .kernels import qblock, qnetwork
from .kernels.modes import NAMES
from .kernels.qblock import qstreamed
from .kernels.qconv import pack_qconv3x3, qconv3x3
from .kernels.qdepthwise import pack_qdepthwise, qdepthwise3x3
from .kernels.qgemm import pack_qweights, qpointwise, qpointwise_acc
from .kernels.qpipeline import qpipeline
from .kernels.qops import ADD_LEFT_SHIFT, qadd, qaverage, qmean, qquantize, qrequantize, qshift
from .kernels.qsoftmax import SCALED_DIFF_INTEGER_BITS, qsoftmax
from .kernels.sync import new_sync
from .memory import view
from .plan import Plan
from .weights.quantization import Quantization, layer_inputs, quantize_multiplier

RELU6_LAYERS = ("stem", "expand", "depthwise", "head")  # the others are linear
SHIFT = {"int8": 0, "uint8": -128}  # from the file's integers to the kernels' int8
INT8 = (-128, 127)


@dataclass(frozen=True)
class Requantized:
    """Where an int32 accumulator goes: y = clamp(requantize(acc, mult, shift) + zero, lo, hi)."""
    mult: np.ndarray    # int32 [C]: Q0.31 multipliers (kernels/requant.py)
    shift: np.ndarray   # int32 [C]: powers of two, positive to the left
    zero: int           # the output's zero point (int8 domain)
    lo: int
    hi: int


@dataclass(frozen=True)
class QConv:
    """A conv layer: y = out(bias + sum (x - x_zero) * (w - w_zero))."""
    weights: np.ndarray   # int8, the engine's layout (HWIO stem, [3, 3, C] depthwise, [K, C] 1x1)
    w_zero: int
    bias: np.ndarray      # int32 [C]
    x_zero: int
    out: Requantized


@dataclass(frozen=True)
class Activation:
    """An activation's quantization as the file states it: real = scale * (q - zero)."""
    dtype: str
    scale: float
    zero: int

    @property
    def int8_zero(self) -> int:
        return self.zero + SHIFT[self.dtype]


class IntegerNetwork:
    """A quantized file's network as the integer kernels run it: weights packed for them,
    the integers of every op, made once; `run` computes one image in an int8 plan's arena.

    bounds: per block, the edges of its channel slices (plan.slice_bounds); a block of
    several is sliced: each slice's expansion, depthwise and share of the projection
    packed on their own, the projections added up in int32 and requantized once.

    A plan with rows (plan.build_plan(..., rows=True, dtype="int8")) runs its first
    blocks as the integer row pipeline (kernels/qpipeline.py) and its row-streamed blocks
    one output row at a time (kernels/qblock.py), on the same packed layers."""

    def __init__(self, q: Quantization, arch: Architecture, bounds=None):
        self.arch = arch
        self.bounds = bounds or [np.array([0, b.hidden]) for b in arch.blocks]
        self._row_layers = None  # the row kernels' tables of layers, made on first use (row_layers)
        self.activations = {name: Activation(a.dtype, float(np.float32(a.scale)), int(a.zero_point))
                            for name, a in q.activations.items()}
        acts, inputs = self.activations, layer_inputs(arch)
        self.convs = {name: _conv(name, layer, acts[inputs[name]], acts[name]) for name, layer in q.layers.items()}
        self.packed = {name: _pack(name, conv) for name, conv in self.convs.items()}
        self.slices = {}  # block name -> per slice, its (QConv, packed) of expand, depthwise, project
        for b, edges in zip(arch.blocks, self.bounds):
            if len(edges) > 2:
                expand = "stem" if b.index == 0 else f"{b.name}/expand"
                self.slices[b.name] = [{kind: (part, _pack(name, part)) for kind, name, part in (
                    ("expand", expand, _output_slice(self.convs[expand], c0, c1)),
                    ("depthwise", f"{b.name}/depthwise", _output_slice(self.convs[f"{b.name}/depthwise"], c0, c1)),
                    ("project", f"{b.name}/project", _input_slice(self.convs[f"{b.name}/project"], c0, c1)))}
                    for c0, c1 in zip(edges[:-1], edges[1:])]
        self.adds = {}
        for b in arch.table2_blocks:
            if b.use_residual:
                a_name, b_name, y_name = inputs[f"{b.name}/expand"], f"{b.name}/project", f"{b.name}/residual"
                self.adds[b.name] = _named(y_name, add_params, acts[a_name].scale, acts[a_name].int8_zero,
                                           acts[b_name].scale, acts[b_name].int8_zero,
                                           acts[y_name].scale, acts[y_name].int8_zero)
        # TFLite writes the global pool as MEAN in int8 models, AVERAGE_POOL_2D (no
        # requantization: the output keeps the input's scale) in legacy uint8 ones
        self.pool_mean = acts["pool"].dtype == "int8"
        self._means = {}  # pixels -> MEAN's multiplier and shift, which fold 1 / pixels in
        self.softmax = None
        if "softmax" in acts and not arch.headless:
            self.softmax = _named("softmax", softmax_params, 1.0, acts["classifier"].scale)

    @property
    def output_width(self) -> int:
        return self.arch.last_channels if self.arch.headless else self.arch.classes

    @property
    def output(self) -> Activation:
        """The quantization of forward's output: the logits, or the pooled features."""
        return self.activations["pool" if self.arch.headless else "classifier"]

    def run(self, image: np.ndarray, plan: Plan, stem_pads, dw_pads, arena: np.ndarray, out: np.ndarray,
            observe) -> None:
        """image int8 [H, W, 3] (the kernels' domain) -> out int8 [width], through the
        buffers of `plan` (one image's) in `arena`, a layer per call from Python, so that
        observe(name, a) sees each activation that exists whole, as it is made, by the
        file's name for it (Engine.intermediates; forward runs the same kernels in one call)."""
        x = image
        if _rowed(plan):
            records = self.records(plan, stem_pads, dw_pads)
            edges, stems, expands, dws, projects, adds = self.row_layers()
            a8 = arena.view(np.int8)
            a32 = arena[:arena.size // 4 * 4].view(np.int32)
        if plan.piped:
            state = np.zeros((2, plan.piped), np.int64)
            qpipeline(a8, a32, records, plan.piped, edges, stems, expands, dws, projects, adds, image, state)
            x = view(arena, plan.steps[plan.piped - 1].y)[0]
            observe(_output_name(plan.steps[plan.piped - 1].block), x)
        for step in plan.steps[plan.piped:]:
            b = step.block
            if step.streamed:
                y = view(arena, step.y)[0]
                qstreamed(a8, a32, records[b.index], edges, stems, expands, dws, projects, adds[b.index], image,
                          x, y)
                observe(_output_name(b), y)
                x = y
                continue
            if b.name in self.slices:
                y = view(arena, step.y)[0]
                self._sliced(b, step, x, stem_pads if b.index == 0 else None, dw_pads[b.index], arena, y, observe)
                x = y
                continue
            e, d, y = view(arena, step.e)[0], view(arena, step.d)[0], view(arena, step.y)[0]
            if b.index == 0:
                self._conv3x3("stem", x, 2, stem_pads, e, qconv3x3)
                observe("stem", e)
            else:
                self._pointwise(f"{b.name}/expand", x, e)
                observe(f"{b.name}/expand", e)
            self._conv3x3(f"{b.name}/depthwise", e, b.stride, dw_pads[b.index], d, qdepthwise3x3)
            observe(f"{b.name}/depthwise", d)
            self._pointwise(f"{b.name}/project", d, y)
            observe(f"{b.name}/project", y)
            if b.use_residual:
                self._add(b.name, x, y)
                observe(f"{b.name}/residual", y)
            x = y
        head = view(arena, plan.head_scratch)
        self._pointwise("head", x, head)
        observe("head", head)
        pooled = view(arena, plan.pooled)[0]
        self._pool(head, pooled)
        observe("pool", pooled)
        if self.arch.headless:
            out[:] = pooled
        else:
            self._pointwise("classifier", pooled.reshape(1, -1), out.reshape(1, -1))
            observe("classifier", out)

    def row_layers(self):
        """The row kernels' tables (kernels/qblock.py): the slices' edges of every block in
        one int64 array, typed lists of the layers' integers per slice (block 0's
        expansion in `stems`), and ADD's integers per block [blocks, 9]."""
        if self._row_layers is None:
            from numba.typed import List
            edges, stems, expands, dws, projects = [], List(), List(), List(), List()
            adds = np.zeros((len(self.arch.blocks), len(AddParams._fields)), np.int64)
            for b, bounds in zip(self.arch.blocks, self.bounds):
                edges += [int(c) for c in bounds]
                for part in self._parts(b):
                    project = _pointwise_layer(*part["project"])
                    if b.index == 0:
                        stems.append(_window_layer(*part["expand"]))
                        expands.append(project)  # a placeholder, never read: keeps one index per slice
                    else:
                        expands.append(_pointwise_layer(*part["expand"]))
                    dws.append(_window_layer(*part["depthwise"]))
                    projects.append(project)
                if b.use_residual:
                    adds[b.index] = self.adds[b.name]
            self._row_layers = (np.array(edges, np.int64), stems, expands, dws, projects, adds)
        return self._row_layers

    def _parts(self, b):
        """Block b's slices: per slice, its (QConv, packed) of expand, depthwise, project."""
        if b.name in self.slices:
            return self.slices[b.name]
        expand = "stem" if b.index == 0 else f"{b.name}/expand"
        return [{kind: (self.convs[name], self.packed[name]) for kind, name in (
            ("expand", expand), ("depthwise", f"{b.name}/depthwise"), ("project", f"{b.name}/project"))}]

    def records(self, plan: Plan, stem_pads, dw_pads) -> np.ndarray:
        """The row kernels' record of every block of `plan` (kernels/qblock.py's fields):
        its geometry, its slices, and its buffers' places in the arena."""
        q = qblock
        recs = np.zeros((len(plan.steps), q.FIELDS), np.int64)
        edges_at, slice_at = 0, 0
        for step in plan.steps:
            b, r = step.block, recs[step.block.index]
            stem = b.index == 0
            (r[q.H], r[q.W]), r[q.CIN] = (plan.input.shape[1:3], 3) if stem else (b.in_size, b.cin)
            (r[q.HE], r[q.WE]), (r[q.HO], r[q.WO]) = b.in_size, b.out_size
            r[q.STEM], r[q.HIDDEN], r[q.COUT], r[q.T], r[q.RESIDUAL] = (stem, b.hidden, b.cout, len(step.bounds) - 1,
                                                                       b.use_residual)
            r[q.EXP_STRIDE], r[q.EXP_TOP], r[q.EXP_LEFT] = 2, stem_pads[0], stem_pads[2]
            r[q.DW_STRIDE], r[q.DW_TOP], r[q.DW_LEFT] = b.stride, dw_pads[b.index][0], dw_pads[b.index][2]
            r[q.SLICE0], r[q.EDGES] = slice_at, edges_at
            slice_at, edges_at = slice_at + len(step.bounds) - 1, edges_at + len(step.bounds)
            # block 0's input is the caller's image: its X is a harmless one-row ring, never read
            r[q.X], r[q.X_ROWS] = (0, 1) if stem else (step.x.offset, 0 if step.x.whole else step.x.shape[0])
            r[q.Y], r[q.Y_ROWS] = step.y.offset, 0 if step.y.whole else step.y.shape[0]
            r[q.E], r[q.D] = step.e.offset, step.d.offset
            r[q.SUMS] = step.sums.offset // 4 if step.sums is not None else -1
            r[q.MODE] = NAMES.index(step.mode)
        return recs

    def head(self, plan: Plan) -> np.ndarray:
        """The head's record (kernels/qnetwork.py's fields): where its buffers lie in the arena."""
        last = plan.steps[-1]
        h = np.zeros(qnetwork.HEAD_FIELDS, np.int64)
        h[qnetwork.HEAD_X], h[qnetwork.HEAD_CONV], h[qnetwork.HEAD_POOLED] = (last.y.offset, plan.head_scratch.offset,
                                                                           plan.pooled.offset)
        h[qnetwork.HEAD_PIXELS] = math.prod(last.block.out_size)
        h[qnetwork.HEAD_CIN], h[qnetwork.HEAD_COUT] = last.block.cout, self.arch.last_channels
        h[qnetwork.HEAD_CLASSES] = 0 if self.arch.headless else self.arch.classes
        return h

    def head_layers(self, pixels: int) -> tuple:
        """The head's layers and the pool's integers as qnetwork.qforward takes them, for
        a head conv of `pixels` pixels."""
        conv = _pointwise_layer(self.convs["head"], self.packed["head"])
        classifier = conv if self.arch.headless else _pointwise_layer(self.convs["classifier"],
                                                                       self.packed["classifier"])
        x, y = self.activations["head"], self.activations["pool"]
        mean = (1, x.int8_zero, *self._mean(pixels), y.int8_zero) if self.pool_mean else (0, 0, 0, 0, 0)
        return (conv, classifier), tuple(int(v) for v in mean)

    def forward(self, image: np.ndarray, plan: Plan, tables, arena: np.ndarray, out: np.ndarray, tid: int = 0,
                threads: int = 1, sync=None) -> None:
        """image int8 [H, W, 3] -> out int8 [width] in one call of kernels/qnetwork.py,
        thread tid's share of it; tables = self.tables(plan, ...), made once per plan."""
        recs, head, layers, pool, sliced, rowed = tables
        edges, stems, expands, dws, projects, adds = self.row_layers()
        a8 = arena.view(np.int8)
        a32 = arena[:arena.size // 4 * 4].view(np.int32)
        state = np.zeros((2, max(plan.piped, 1)), np.int64)
        qnetwork.qforward(a8, a32, recs, plan.piped, edges, stems, expands, dws, projects, adds, head, layers, pool,
                          image, out, state, tid, threads, new_sync(threads) if sync is None else sync, sliced, rowed)

    def tables(self, plan: Plan, stem_pads, dw_pads) -> tuple:
        """What forward needs of a plan: the blocks' records, the head's, its layers, the
        pool's integers, and the code the plan needs (qforward's sliced and rowed: True or None)."""
        head = self.head(plan)
        sliced = any(len(step.bounds) > 2 and not (step.streamed or step.piped) for step in plan.steps)
        return (self.records(plan, stem_pads, dw_pads), head, *self.head_layers(int(head[qnetwork.HEAD_PIXELS])),
                True if sliced else None, True if _rowed(plan) else None)

    def _sliced(self, b, step, x, stem_pads, dw_pads, arena, y, observe):
        """A sliced block: per slice, E and D of its channels (whole, in the plan's slice
        buffers), its share of the projection added into int32 sums; then the sums
        requantized once, and the residual added."""
        sums = view(arena, step.sums).reshape(-1, b.cout)
        sums[:] = 0
        He, We = step.e.shape[:2]
        Ho, Wo = b.out_size
        for part in self.slices[b.name]:
            expand, packed = part["expand"]
            cs = expand.bias.size
            e = view(arena, step.e).reshape(-1)[:He * We * cs].reshape(He, We, cs)
            d = view(arena, step.d).reshape(-1)[:Ho * Wo * cs].reshape(Ho, Wo, cs)
            if stem_pads is not None:
                self._conv3x3_with(expand, packed, x, 2, stem_pads, e, qconv3x3)
            else:
                self._pointwise_with(expand, packed, x, e)
            self._conv3x3_with(*part["depthwise"], e, b.stride, dw_pads, d, qdepthwise3x3)
            project, (weights, colsum) = part["project"]
            qpointwise_acc(d.reshape(-1, cs), weights, colsum, project.x_zero, project.w_zero, sums)
        project = self.convs[f"{b.name}/project"]
        out = project.out
        qrequantize(sums, project.bias, out.mult, out.shift, out.zero, out.lo, out.hi, y.reshape(-1, b.cout))
        observe(f"{b.name}/project", y)
        if b.use_residual:
            self._add(b.name, x, y)
            observe(f"{b.name}/residual", y)

    def _pool(self, head, pooled):
        if not self.pool_mean:
            qaverage(head, *INT8, pooled, True)
            return
        x, y = self.activations["head"], self.activations["pool"]
        qmean(head, x.int8_zero, *self._mean(head.shape[0]), y.int8_zero, *INT8, pooled)

    def _mean(self, pixels: int) -> tuple[int, int]:
        """MEAN's multiplier and shift over `pixels` values (1 / pixels folded in)."""
        if pixels not in self._means:
            x, y = self.activations["head"], self.activations["pool"]
            self._means[pixels] = _named("pool", mean_params, x.scale, y.scale, pixels)
        return self._means[pixels]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The file's integer softmax of int8 logits [N, classes], as reals (scale 1/256)."""
        out = np.empty_like(logits)
        qsoftmax(logits, *self.softmax, out)
        return dequantize(out, self.activations["softmax"])

    def _pointwise(self, name, x, out):
        self._pointwise_with(self.convs[name], self.packed[name], x, out)

    @staticmethod
    def _pointwise_with(conv, packing, x, out):
        packed, colsum = packing
        qpointwise(x.reshape(-1, x.shape[-1]), packed, colsum, conv.bias, conv.out.mult, conv.out.shift,
                   conv.x_zero, conv.w_zero, conv.out.zero, conv.out.lo, conv.out.hi, out.reshape(-1, out.shape[-1]))

    def _add(self, block, x, y):
        """y = ADD(x, y), in place: the residual of a block."""
        a = self.adds[block]
        flat = y.reshape(-1, y.shape[-1])
        qadd(x.reshape(flat.shape), a.a_zero, a.a_mult, a.a_shift, flat, a.b_zero, a.b_mult, a.b_shift,
             a.y_zero, a.y_mult, a.y_shift, *INT8, flat)

    def _conv3x3(self, name, x, stride, pads, out, kernel):
        self._conv3x3_with(self.convs[name], self.packed[name], x, stride, pads, out, kernel)

    @staticmethod
    def _conv3x3_with(conv, packed, x, stride, pads, out, kernel):
        kernel(x, packed, conv.bias, conv.out.mult, conv.out.shift, conv.x_zero, conv.out.zero,
               conv.out.lo, conv.out.hi, stride, pads[0], pads[2], out)


def _rowed(plan: Plan) -> bool:
    """Whether the plan runs blocks piped or row-streamed (the row kernels)."""
    return plan.piped > 0 or any(step.streamed for step in plan.steps)


def _output_name(b) -> str:
    """The file's name for a block's output (after the residual's ADD, if it has one)."""
    return f"{b.name}/residual" if b.use_residual else f"{b.name}/project"


def _array(a: np.ndarray) -> np.ndarray:
    """C-contiguous and writeable: the one array type of the row kernels' tables."""
    return np.require(a, requirements=["C", "W"])


def _pointwise_layer(conv: QConv, packing) -> tuple:
    """A 1x1 layer as the row kernels take it (kernels/qblock.py)."""
    packed, colsum = packing
    o = conv.out
    return (_array(packed), _array(colsum), _array(conv.bias), _array(o.mult), _array(o.shift),
            int(conv.x_zero), int(conv.w_zero), int(o.zero), int(o.lo), int(o.hi))


def _window_layer(conv: QConv, packed) -> tuple:
    """A 3x3 layer (the stem, a depthwise) with centered weights, as the row kernels take it."""
    o = conv.out
    return (_array(packed), _array(conv.bias), _array(o.mult), _array(o.shift), int(conv.x_zero), int(o.zero),
            int(o.lo), int(o.hi))


def _conv(name: str, layer, x: Activation, y: Activation) -> QConv:
    kind = name.rpartition("/")[2]
    shift = SHIFT[layer.kernel.dtype.name]
    if layer.kernel_zero_point.size != 1 and layer.kernel_zero_point.any():
        raise EngineError(f"{name}: per-channel weight zero points other than 0 have no integer kernel")
    return QConv(weights=(layer.kernel.astype(np.int16) + shift).astype(np.int8),
                 w_zero=int(layer.kernel_zero_point[0]) + shift, bias=layer.bias.astype(np.int32),
                 x_zero=x.int8_zero,
                 out=_requantized(name, x, layer.kernel_scale, y, layer.bias.size, kind in RELU6_LAYERS))


def _output_slice(conv: QConv, c0: int, c1: int) -> QConv:
    """The layer's output channels c0..c1."""
    out = conv.out
    return QConv(np.ascontiguousarray(conv.weights[..., c0:c1]), conv.w_zero, conv.bias[c0:c1], conv.x_zero,
                 Requantized(out.mult[c0:c1], out.shift[c0:c1], out.zero, out.lo, out.hi))


def _input_slice(conv: QConv, c0: int, c1: int) -> QConv:
    """A 1x1 layer's input channels c0..c1 (its output is whole: the slices add up)."""
    return QConv(np.ascontiguousarray(conv.weights[c0:c1]), conv.w_zero, conv.bias, conv.x_zero, conv.out)


def _pack(name: str, conv: QConv):
    """The weights as the layer's kernel takes them."""
    kind = name.rpartition("/")[2]
    if kind == "stem":
        return pack_qconv3x3(conv.weights, conv.w_zero)
    if kind == "depthwise":
        return pack_qdepthwise(conv.weights, conv.w_zero)
    return pack_qweights(conv.weights, conv.w_zero)


def _named(tensor: str, make, *args):
    """make(*args), its refusal naming the tensor as the file does."""
    try:
        return make(*args)
    except ValueError as e:
        raise WeightFileError(f"quantization/activations/{tensor}: TFLite could not make its integers: {e}") from None


def _requantized(name: str, x: Activation, w_scale: np.ndarray, y: Activation, channels: int,
                 relu6: bool) -> Requantized:
    """TFLite's per-channel multipliers of a conv (int8: the scales multiplied in double;
    uint8: the input and weight scales multiplied in float32 first, as its
    GetQuantizedConvolutionMultipler does) and the fused activation's bounds."""
    scales = np.broadcast_to(w_scale.astype(np.float32), (channels,))
    if x.dtype == "uint8":
        reals = [float(np.float32(np.float32(x.scale) * s)) / y.scale for s in scales]
    else:
        reals = [x.scale * float(s) / y.scale for s in scales]
    pairs = [quantize_multiplier(r) for r in reals]
    lo, hi = activation_bounds(y, relu6)
    return Requantized(np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32),
                       y.int8_zero, lo, hi)


def activation_bounds(y: Activation, relu6: bool) -> tuple[int, int]:
    """The clamp of a layer's output in the kernels' int8: the dtype's range, narrowed to
    ReLU6's [0, 6] as TFLite's CalculateActivationRangeQuantized rounds it (float32)."""
    lo, hi = INT8
    if relu6:
        zero = y.int8_zero
        six = zero + int(_round_half_away(np.float32(6.0) / np.float32(y.scale)))
        lo, hi = max(lo, zero), min(hi, six)
    return lo, hi


def _round_half_away(v):
    """TfLiteRound (std::round): halves away from zero, in v's own precision."""
    return np.sign(v) * np.floor(np.abs(v) + v.dtype.type(0.5))


def integer_input(x: np.ndarray, a: Activation, out: np.ndarray) -> np.ndarray:
    """One image as the kernels' int8, C-contiguous: x itself where it is int8 and
    contiguous; else, in `out`, float quantized with the input's scale and zero point (as
    TFLite's QUANTIZE), uint8 values shifted by -128, int8 copied."""
    if x.dtype == np.int8 and x.flags.c_contiguous:
        return x
    if not (x.flags.c_contiguous and x.dtype.isnative):  # strided or big-endian: the kernels read neither
        x = np.ascontiguousarray(x, x.dtype.newbyteorder("="))
    if x.dtype == np.int8:
        out[:] = x
    elif x.dtype == np.uint8:
        qshift(x, out)
    else:
        lo, hi = np.iinfo(np.dtype(a.dtype)).min, np.iinfo(np.dtype(a.dtype)).max
        qquantize(x, a.scale, a.zero, lo, hi, SHIFT[a.dtype], out)
    return out


def dequantize(q: np.ndarray, a: Activation) -> np.ndarray:
    """int8 kernel values of an activation as float32 reals."""
    return ((q.astype(np.float32) - a.int8_zero) * np.float32(a.scale)).astype(np.float32)



# -- the other ops' integers, as their Prepare makes them (docs/int8_arithmetic.md) -----------
# Each raises ValueError for scales TFLite could not turn into integers; the caller names the tensor.

class AddParams(NamedTuple):
    """kernels.qops.qadd's integer arguments after the arrays, in its order."""
    a_zero: int
    a_mult: int
    a_shift: int
    b_zero: int
    b_mult: int
    b_shift: int
    y_zero: int
    y_mult: int
    y_shift: int


def add_params(scale_a, zero_a, scale_b, zero_b, scale_y, zero_y) -> AddParams:
    """ADD (8-bit): t = 2 max(s_a, s_b) in float32; the inputs scaled by s / t, the sum by
    t / (2^20 s_y) (2^20 s_y in float32), each a multiplier below one. Zero points pass
    through (the caller's domain)."""
    sa, sb, sy = _scale(scale_a), _scale(scale_b), _scale(scale_y)
    twice_max = np.float32(2) * max(sa, sb)
    a = _below_one(float(sa) / float(twice_max))
    b = _below_one(float(sb) / float(twice_max))
    y = _below_one(float(twice_max) / float(np.float32(1 << ADD_LEFT_SHIFT) * sy))
    return AddParams(int(zero_a), *a, int(zero_b), *b, int(zero_y), *y)


def mean_params(scale_x, scale_y, count: int) -> tuple[int, int]:
    """MEAN of `count` values: QuantizeMultiplier(s_x / s_y), then QuantizedMeanOrSum folds
    1/count in: k = min(floor(log2 count), 32, 31 + shift), (multiplier << k) // count and
    shift - k."""
    if count < 1:
        raise ValueError(f"a mean over {count} values")
    mult, shift = quantize_multiplier(float(_scale(scale_x)) / float(_scale(scale_y)))
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (mult << k) // count, shift - k


class SoftmaxParams(NamedTuple):
    input_multiplier: int
    input_left_shift: int
    diff_min: int


def softmax_params(beta, scale_x) -> SoftmaxParams:
    """SOFTMAX: beta * s_x * 2^26 (beta and s_x float32, the product in double), capped at
    2^31 - 1, as a multiplier above one; diff_min = -floor(31 * 2^26 / 2^left_shift)."""
    real = min(float(np.float32(beta)) * float(_scale(scale_x)) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)),
               (1 << 31) - 1.0)
    if not real > 1.0:
        raise ValueError(f"beta * input scale * 2^26 = {real!r} is not above 1")
    mult, left_shift = quantize_multiplier(real)
    radius = math.floor(((1 << SCALED_DIFF_INTEGER_BITS) - 1) * (1 << (31 - SCALED_DIFF_INTEGER_BITS))
                        / (1 << left_shift))
    return SoftmaxParams(mult, left_shift, -radius)


def _below_one(real: float) -> tuple[int, int]:
    if not 0.0 < real < 1.0:
        raise ValueError(f"multiplier {real!r} not in (0, 1), as TFLite requires")
    return quantize_multiplier(real)


def _scale(value) -> np.float32:
    s = np.float32(value)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"scale {value!r} must be positive and finite")
    return s
