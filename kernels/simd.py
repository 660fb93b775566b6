"""Explicit SIMD for Numba: a vector of 16 float32 lanes as a Numba type, and the few
operations the GEMM needs, each one LLVM instruction or intrinsic.

Why: LLVM's auto-vectorizer turns `out[p, c] += x[p, k] * w[k, c]` into vector code,
but it cannot keep `out` in registers across k (it cannot prove `out` does not alias
`w`), so every multiply-add also loads and stores its accumulator. Written with these
vectors, the accumulators of a tile are SSA values: they live in registers for the
whole k loop (register blocking), and the loop is bound by FMAs instead of memory.

16 lanes is one AVX-512 register. On narrower hardware LLVM splits each vector into
two AVX2 (or four SSE / NEON) registers, so the code stays correct everywhere; the tiles
are sized for the registers of the target (target.py).

Loads and stores take a lane count n: lanes >= n are neither read nor written (masked),
so a tile can end anywhere in a row without touching memory past it.
"""
import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .target import current

LANES = 16
# AVX-512 masks its loads and stores for free. Without it, a masked store is slow (on
# AMD, microcoded: about 12 cycles for a ymm, measured as a depthwise at 5% of peak), so
# vload and vstore branch to a plain access whenever all 16 lanes, or exactly the first
# 8, are live, and store other counts float by float; the branches fold away where the
# lane count is a constant.
MASKS_ARE_CHEAP = current().isa == "avx512"
_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)
_HALF = ir.VectorType(_F32, LANES // 2)
_MASK = ir.VectorType(ir.IntType(1), LANES)
_I32 = ir.IntType(32)


class F32x16(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


f32x16 = F32x16()


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


class F32x8(types.Type):
    """Half a vector: one ymm register. For the GEMM's last 8 or fewer channels of a
    row on AVX2 (gemm._half_column), where a 16-lane tile would do half its FMAs on
    zero padding."""
    def __init__(self):
        super().__init__(name="f32x8")


f32x8 = F32x8()


@register_model(F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _HALF)


_LLVM = {f32x16: _VEC, f32x8: _HALF}  # each vector type's LLVM type


def _vector(*args):
    """The vector type all of args are (f32x16 or f32x8), else None (no such intrinsic)."""
    return args[0] if args[0] in _LLVM and all(a == args[0] for a in args) else None


def _vector_pointer(context, builder, arrty, arr, index_type, index):
    """Pointer to arr[index] (no bounds check, no negative wraparound), as <16 x float>*."""
    ary = context.make_array(arrty)(context, builder, arr)
    indices = cgutils.unpack_tuple(builder, index, len(index_type))
    indices = [context.cast(builder, i, t, types.intp) for i, t in zip(indices, index_type)]
    shape = cgutils.unpack_tuple(builder, ary.shape, arrty.ndim)
    strides = cgutils.unpack_tuple(builder, ary.strides, arrty.ndim)
    ptr = cgutils.get_item_pointer2(context, builder, ary.data, shape, strides, arrty.layout, indices)
    return builder.bitcast(ptr, _VEC.as_pointer())


def _splat(builder, value, vector_type):
    undef = ir.Constant(vector_type, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    count = vector_type.count
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(_I32, count), [0] * count))


def _lane_mask(builder, n, count=LANES):
    """<count x i1>: lane l is on when l < n."""
    lanes = ir.VectorType(ir.IntType(64), count)
    return builder.icmp_signed("<", ir.Constant(lanes, list(range(count))), _splat(builder, n, lanes))


def _choose(builder, condition, then, otherwise):
    """then() if condition else otherwise(), each building its own value in its own block."""
    with builder.if_else(condition, likely=True) as (yes, no):
        with yes:
            a, a_block = then(), builder.block
        with no:
            b, b_block = otherwise(), builder.block
    value = builder.phi(a.type)
    value.add_incoming(a, a_block)
    value.add_incoming(b, b_block)
    return value


def _is_full(builder, n):
    return builder.icmp_signed(">=", n, ir.Constant(ir.IntType(64), LANES))


def _is_half(builder, n):
    """n == 8: the 8-channel outputs of the stem and pairs layouts, one ymm on AVX2."""
    return builder.icmp_signed("==", n, ir.Constant(ir.IntType(64), LANES // 2))


def _check_index(arr, index):
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout in "CA"):
        raise TypeError("expected a float32 array")
    if not (isinstance(index, types.UniTuple) and index.count == arr.ndim
            and isinstance(index.dtype, types.Integer)):
        raise TypeError("expected a tuple of one integer index per dimension")


@intrinsic
def vload(typingctx, arr, index, n):
    """The n floats from arr[index] along the last axis in lanes 0..n-1 (n <= 16), zeros
    after; nothing past them is read. The last axis must be contiguous."""
    _check_index(arr, index)

    def codegen(context, builder, sig, args):
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        n = context.cast(builder, args[2], sig.args[2], types.int64)

        def masked():
            fnty = ir.FunctionType(_VEC, [_VEC.as_pointer(), _I32, _MASK, _VEC])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v16f32.p0")
            return builder.call(fn, [ptr, ir.Constant(_I32, 4), _lane_mask(builder, n), ir.Constant(_VEC, None)])
        if MASKS_ARE_CHEAP:
            return masked()
        def half():
            low = builder.load(builder.bitcast(ptr, _HALF.as_pointer()), align=4)
            return _shuffle(builder, low, ir.Constant(_HALF, None), list(range(LANES)))
        return _choose(builder, _is_full(builder, n), lambda: builder.load(ptr, align=4),
                       lambda: _choose(builder, _is_half(builder, n), half, masked))
    return f32x16(arr, index, n), codegen


@intrinsic
def vstore(typingctx, arr, index, n, v):
    """Write lanes 0..n-1 of v to arr[index] along the last axis; nothing past them."""
    _check_index(arr, index)

    def codegen(context, builder, sig, args):
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        n = context.cast(builder, args[2], sig.args[2], types.int64)

        def masked():
            fnty = ir.FunctionType(ir.VoidType(), [_VEC, _VEC.as_pointer(), _I32, _MASK])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16f32.p0")
            builder.call(fn, [args[3], ptr, ir.Constant(_I32, 4), _lane_mask(builder, n)])
        if MASKS_ARE_CHEAP:
            masked()
        else:
            with builder.if_else(_is_full(builder, n), likely=True) as (full, partial):
                with full:
                    builder.store(args[3], ptr, align=4)
                with partial:
                    with builder.if_else(_is_half(builder, n)) as (half, other):
                        with half:
                            low = builder.shuffle_vector(args[3], ir.Constant(_VEC, ir.Undefined),
                                                         ir.Constant(ir.VectorType(_I32, LANES // 2), list(range(LANES // 2))))
                            builder.store(low, builder.bitcast(ptr, _HALF.as_pointer()), align=4)
                        with other:
                            _store_lanes(builder, args[3], ptr, n)
        return context.get_dummy_value()
    return types.none(arr, index, n, f32x16), codegen


def _store_lanes(builder, v, ptr, n):
    """Lanes 0..n-1 of v, one float at a time: without AVX-512, cheaper than a masked
    store for the few lanes left at the end of a row (a slice of 36 channels ends in 4)."""
    floats = builder.bitcast(ptr, _F32.as_pointer())
    for lane in range(v.type.count - 1):
        with builder.if_then(builder.icmp_signed(">", n, ir.Constant(ir.IntType(64), lane))):
            builder.store(builder.extract_element(v, ir.Constant(_I32, lane)),
                          builder.gep(floats, [ir.Constant(_I32, lane)]), align=4)


@intrinsic
def vload8(typingctx, arr, index, n):
    """vload into half a vector: the n floats from arr[index] (n <= 8), zeros after."""
    _check_index(arr, index)

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1]),
                              _HALF.as_pointer())
        n = context.cast(builder, args[2], sig.args[2], types.int64)

        def masked():
            mask = ir.VectorType(ir.IntType(1), LANES // 2)
            fnty = ir.FunctionType(_HALF, [_HALF.as_pointer(), _I32, mask, _HALF])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v8f32.p0")
            return builder.call(fn, [ptr, ir.Constant(_I32, 4), _lane_mask(builder, n, LANES // 2),
                                     ir.Constant(_HALF, None)])
        return _choose(builder, _is_half(builder, n), lambda: builder.load(ptr, align=4), masked)
    return f32x8(arr, index, n), codegen


@intrinsic
def vstore8(typingctx, arr, index, n, v):
    """vstore of half a vector: lanes 0..n-1 of v (n <= 8) to arr[index]."""
    _check_index(arr, index)

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1]),
                              _HALF.as_pointer())
        n = context.cast(builder, args[2], sig.args[2], types.int64)
        with builder.if_else(_is_half(builder, n), likely=True) as (full, partial):
            with full:
                builder.store(args[3], ptr, align=4)
            with partial:
                _store_lanes(builder, args[3], ptr, n)
        return context.get_dummy_value()
    return types.none(arr, index, n, f32x8), codegen


@intrinsic
def vsplat(typingctx, x):
    """All 16 lanes = x (as float32)."""
    if not isinstance(x, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32), _VEC)
    return f32x16(x), codegen


@intrinsic
def vbroadcast(typingctx, arr, index):
    """All 16 lanes = arr[index]: one broadcast load. Unlike vsplat(arr[index]), the
    address has no check for negative indices, so in a loop it is a pointer that steps
    (with a check per pixel, the 6-pixel GEMM tile spilled its broadcasts on AVX2)."""
    _check_index(arr, index)
    return f32x16(arr, index), _broadcast(_VEC)


def _broadcast(vector_type):
    """The codegen of a broadcast load of arr[index] into every lane of vector_type."""
    def codegen(context, builder, sig, args):
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        value = builder.load(builder.bitcast(ptr, _F32.as_pointer()), align=4)
        return _splat(builder, value, vector_type)
    return codegen


@intrinsic
def vbroadcast8(typingctx, arr, index):
    """vbroadcast into half a vector: all 8 lanes = arr[index]."""
    _check_index(arr, index)
    return f32x8(arr, index), _broadcast(_HALF)


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c in each lane: one FMA, one rounding, where the target has FMA (every
    x86-64 since Haswell, every ARMv8); elsewhere (NUMBA_CPU_NAME=generic) a multiply
    and an add, where llvm.fma would call fmaf() once per lane."""
    vec = _vector(a, b, c)
    if vec is None:
        return None

    def codegen(context, builder, sig, args):
        llvm = _LLVM[vec]
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(llvm, [llvm] * 3),
                                            f"llvm.fmuladd.v{llvm.count}f32")
        return builder.call(fn, args)
    return vec(vec, vec, vec), codegen


@intrinsic
def vadd(typingctx, a, b):
    """a + b in each lane."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vclamp(typingctx, v, lo, hi):
    """min(max(v, lo), hi) in each lane; lo, hi = -inf, inf leaves v as it is."""
    vec = _vector(v)
    if vec is None:
        return None

    def codegen(context, builder, sig, args):
        lo = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32), _LLVM[vec])
        hi = _splat(builder, context.cast(builder, args[2], sig.args[2], types.float32), _LLVM[vec])
        above = builder.select(builder.fcmp_ordered(">", args[0], lo), args[0], lo)
        return builder.select(builder.fcmp_ordered("<", above, hi), above, hi)
    return vec(vec, types.float32, types.float32), codegen


def _shuffle(builder, a, b, lanes):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, LANES), lanes))


# For the stem (stem.py), whose lanes hold two taps of each channel.

@intrinsic
def vload_pair(typingctx, arr, index):
    """arr[index] and the float after it, in lanes 0, 2, 4.. and 1, 3, 5..: one 64-bit
    broadcast load. The last axis must be contiguous."""
    _check_index(arr, index)

    def codegen(context, builder, sig, args):
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        pair_type = ir.VectorType(_F32, 2)
        pair = builder.load(builder.bitcast(ptr, pair_type.as_pointer()), align=4)
        return _shuffle(builder, pair, ir.Constant(pair_type, ir.Undefined), [0, 1] * (LANES // 2))
    return f32x16(arr, index), codegen


@intrinsic
def vsplat_at(typingctx, x, s, span):
    """x in the lanes l with l % span == s, 0 in the others."""
    if not isinstance(x, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        lanes = ir.Constant(ir.VectorType(i64, LANES), list(range(LANES)))
        s, span = (context.cast(builder, v, t, types.int64) for v, t in zip(args[1:], sig.args[1:]))
        mask = builder.icmp_signed("==", builder.srem(lanes, _splat(builder, span, ir.VectorType(i64, LANES))),
                                   _splat(builder, s, ir.VectorType(i64, LANES)))
        value = _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32), _VEC)
        return builder.select(mask, value, ir.Constant(_VEC, None))
    return f32x16(x, s, span), codegen


@intrinsic
def vrepeat8(typingctx, v):
    """Lanes 0-7 of v, twice: the same 8 channels for two pixels."""
    def codegen(context, builder, sig, args):
        return _shuffle(builder, args[0], ir.Constant(_VEC, ir.Undefined), list(range(8)) * 2)
    return f32x16(f32x16), codegen


@intrinsic
def vfold(typingctx, u, v):
    """Lane l = u[2l] + u[2l + 1] for l < 8, and v[2l - 16] + v[2l - 15] for l >= 8: the
    sums of 8 channels from u, then of 8 more from v."""
    def codegen(context, builder, sig, args):
        even = _shuffle(builder, args[0], args[1], list(range(0, 2 * LANES, 2)))
        odd = _shuffle(builder, args[0], args[1], list(range(1, 2 * LANES, 2)))
        return builder.fadd(even, odd)
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask for the cache line holding arr[index] (no bounds check; a hint, never a fault)."""
    _check_index(arr, index)

    def codegen(context, builder, sig, args):
        ptr = _vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return types.none(arr, index), codegen
