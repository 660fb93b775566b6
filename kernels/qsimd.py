"""Explicit integer SIMD for Numba: 16 lanes of int32 as a Numba type, and what the int8
GEMM (qgemm.py) needs: the 4-byte dot product into int32 (vpdpbusd where the target has
AVX-512 VNNI; elsewhere two products of int16 pairs, pmaddwd on x86), TFLite's
requantization on 16 lanes, and loads and stores of int32 and int8 lanes with a lane
count (lanes >= n neither read nor written).

As simd.py's float vectors: one zmm with AVX-512, two ymm with AVX2, four xmm or NEON
registers elsewhere; LLVM splits what the target cannot hold in one register.
"""
import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .target import current

LANES = 16
DOT = current().int_dot  # "avx512vnni", "avxvnni" or "none"
_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(_I32, LANES)
_BYTES = ir.VectorType(_I8, 4 * LANES)  # a vector's 64 bytes: 4 per lane
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


class I32x16(types.Type):
    def __init__(self):
        super().__init__(name="i32x16")


i32x16 = I32x16()


@register_model(I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


class I16x64(types.Type):
    """A packed weight vector of int16 pairs (qgemm's layout without VNNI): 16 lanes x 4 inputs."""
    def __init__(self):
        super().__init__(name="i16x64")


i16x64 = I16x64()
_WIDE16 = ir.VectorType(_I16, 4 * LANES)


@register_model(I16x64)
class _I16x64Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _WIDE16)


def _const(value, count=LANES, width=_I32):
    return ir.Constant(ir.VectorType(width, count), [value] * count)


def _splat(builder, value, count=LANES):
    undef = ir.Constant(ir.VectorType(value.type, count), ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(_I32, count), [0] * count))


def _pointer(context, builder, arrty, arr, index_type, index, pointee):
    """Pointer to arr[index] (no bounds check, no negative wraparound), as pointee*."""
    ary = context.make_array(arrty)(context, builder, arr)
    indices = cgutils.unpack_tuple(builder, index, len(index_type))
    indices = [context.cast(builder, i, t, types.intp) for i, t in zip(indices, index_type)]
    shape = cgutils.unpack_tuple(builder, ary.shape, arrty.ndim)
    strides = cgutils.unpack_tuple(builder, ary.strides, arrty.ndim)
    ptr = cgutils.get_item_pointer2(context, builder, ary.data, shape, strides, arrty.layout, indices)
    return builder.bitcast(ptr, pointee.as_pointer())


def _check(arr, index, dtypes):
    if not (isinstance(arr, types.Array) and arr.dtype in dtypes):
        raise TypeError(f"expected an array of {dtypes}")
    if not (isinstance(index, types.UniTuple) and index.count == arr.ndim
            and isinstance(index.dtype, types.Integer)):
        raise TypeError("expected a tuple of one integer index per dimension")


def _lane_mask(builder, n, count=LANES):
    lanes = ir.VectorType(_I64, count)
    return builder.icmp_signed("<", ir.Constant(lanes, list(range(count))), _splat(builder, n, count))


@intrinsic
def wload(typingctx, arr, index):
    """The packed weight vector at arr[index], whole: 16 lanes of 4 bytes (int8 or uint8
    weights, an i32x16), or of 4 int16 in two pairs (int16 weights, an i16x64)."""
    _check(arr, index, (types.uint8, types.int8, types.int16))
    vec, ty = (_WIDE16, i16x64) if arr.dtype == types.int16 else (_VEC, i32x16)

    def codegen(context, builder, sig, args):
        return builder.load(_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], vec), align=1)
    return ty(arr, index), codegen


@intrinsic
def quad(typingctx, arr, index):
    """The 4 bytes at arr[index] as one int32 (little-endian), unaligned."""
    _check(arr, index, (types.uint8, types.int8))

    def codegen(context, builder, sig, args):
        return builder.load(_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], _I32), align=1)
    return types.int32(arr, index), codegen


@intrinsic
def vdot(typingctx, acc, w, q):
    """acc + in each lane l: sum over j < 4 of byte 4l + j of w (unsigned) times byte j of
    q (signed): vpdpbusd with q broadcast (AVX-512 VNNI), its widened sum elsewhere. Exact:
    4 x 255 x 128 fits int16's range twice over, and the sum wraps as int32 does."""
    if not (acc == i32x16 and w == i32x16 and isinstance(q, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        acc, w = args[0], args[1]
        q = context.cast(builder, args[2], sig.args[2], types.int32)
        if DOT == "avx512vnni":
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                                "llvm.x86.avx512.vpdpbusd.512")
            return builder.call(fn, [acc, w, _splat(builder, q)])
        # Without VNNI: bytes widened to int16, then pairs multiplied and added into int32
        # (the pattern LLVM makes pmaddwd of: exact, 255 x 128 x 2 fits int32), then the
        # two pairs of each lane added.
        wide16, wide32 = ir.VectorType(_I16, 4 * LANES), ir.VectorType(_I32, 4 * LANES)
        u = builder.zext(builder.bitcast(w, _BYTES), wide16)
        s = builder.sext(builder.bitcast(q, ir.VectorType(_I8, 4)), ir.VectorType(_I16, 4))
        s = builder.shuffle_vector(s, ir.Constant(s.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(_I32, 4 * LANES), [0, 1, 2, 3] * LANES))
        m = builder.mul(builder.sext(u, wide32), builder.sext(s, wide32))
        pairs = ir.VectorType(_I32, 2 * LANES)
        even = builder.shuffle_vector(m, ir.Constant(wide32, ir.Undefined), ir.Constant(pairs, list(range(0, 4 * LANES, 2))))
        odd = builder.shuffle_vector(m, ir.Constant(wide32, ir.Undefined), ir.Constant(pairs, list(range(1, 4 * LANES, 2))))
        m2 = builder.add(even, odd)
        even = builder.shuffle_vector(m2, ir.Constant(pairs, ir.Undefined), ir.Constant(_VEC, list(range(0, 2 * LANES, 2))))
        odd = builder.shuffle_vector(m2, ir.Constant(pairs, ir.Undefined), ir.Constant(_VEC, list(range(1, 2 * LANES, 2))))
        return builder.add(acc, builder.add(even, odd))
    return i32x16(i32x16, i32x16, q), codegen


@intrinsic
def vdotx(typingctx, acc, w, q):
    """acc + in each lane l: sum over j < 4 of (byte j of q + 128) times byte 4l + j of w
    (signed): x's bytes made unsigned by flipping their sign bit, for vpdpbusd's unsigned
    operand (AVX-512 VNNI), the weights signed. With an i16x64 w (the weights of inputs 0, 1
    of the 16 lanes, then of inputs 2, 3, as int16), two pair products (pmaddwd) of x's
    bytes widened to int16. Exact: the sum of four 255 x 128 fits int32 and wraps as int32
    does."""
    if not (acc == i32x16 and w in (i32x16, i16x64) and isinstance(q, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        acc, w = args[0], args[1]
        q = builder.xor(context.cast(builder, args[2], sig.args[2], types.int32), ir.Constant(_I32, 0x80808080))
        if sig.args[1] == i16x64:
            u = builder.zext(builder.bitcast(q, ir.VectorType(_I8, 4)), ir.VectorType(_I16, 4))
            u = builder.bitcast(u, ir.VectorType(_I32, 2))  # x's inputs 0, 1 and 2, 3: two int16 pairs
            halves = ir.VectorType(_I16, 2 * LANES)
            for pair in range(2):
                b = builder.bitcast(_splat(builder, builder.extract_element(u, ir.Constant(_I32, pair))), halves)
                ws = builder.shuffle_vector(w, ir.Constant(_WIDE16, ir.Undefined),
                                            ir.Constant(ir.VectorType(_I32, 2 * LANES), list(range(32 * pair, 32 * pair + 32))))
                acc = builder.add(acc, _pair_products(builder, ws, b))
            return acc
        if DOT == "avx512vnni":
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                                "llvm.x86.avx512.vpdpbusd.512")
            return builder.call(fn, [acc, _splat(builder, q), w])
        wide32 = ir.VectorType(_I32, 4 * LANES)
        s = builder.sext(builder.bitcast(w, _BYTES), wide32)
        u = builder.zext(builder.bitcast(q, ir.VectorType(_I8, 4)), ir.VectorType(_I32, 4))
        u = builder.shuffle_vector(u, ir.Constant(u.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(_I32, 4 * LANES), [0, 1, 2, 3] * LANES))
        return builder.add(acc, _quad_sums(builder, builder.mul(s, u)))
    return i32x16(i32x16, w, q), codegen


X86 = current().isa in ("avx512", "avx2", "sse")  # pmaddwd, and vpdpwssd with VNNI
_PMADDWD = {"avx512": (32, "llvm.x86.avx512.pmaddw.d.512"), "avx2": (16, "llvm.x86.avx2.pmadd.wd"),
            "sse": (8, "llvm.x86.sse2.pmadd.wd")}.get(current().isa)


def _pair_products(builder, a, b):
    """In each lane l of 16: a[2l] b[2l] + a[2l+1] b[2l+1], of the <32 x i16> a and b, as
    int32: pmaddwd on x86, one per register (LLVM's own match misses the pairs of
    bitcast lanes and multiplies in int32), plain IR elsewhere."""
    if _PMADDWD:
        width, name = _PMADDWD
        half, out = ir.VectorType(_I16, width), ir.VectorType(_I32, width // 2)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(out, [half, half]), name)
        parts = []
        for at in range(0, 2 * LANES, width):
            pick = ir.Constant(ir.VectorType(_I32, width), list(range(at, at + width)))
            parts.append(builder.call(fn, [builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), pick)
                                           for v in (a, b)]))
        while len(parts) > 1:  # concatenated, pairwise
            parts = [builder.shuffle_vector(parts[i], parts[i + 1],
                                            ir.Constant(ir.VectorType(_I32, 2 * parts[i].type.count),
                                                        list(range(2 * parts[i].type.count))))
                     for i in range(0, len(parts), 2)]
        return parts[0]
    wide = ir.VectorType(_I32, 2 * LANES)
    m = builder.mul(builder.sext(a, wide), builder.sext(b, wide))
    even = builder.shuffle_vector(m, ir.Constant(wide, ir.Undefined), ir.Constant(_VEC, list(range(0, 2 * LANES, 2))))
    odd = builder.shuffle_vector(m, ir.Constant(wide, ir.Undefined), ir.Constant(_VEC, list(range(1, 2 * LANES, 2))))
    return builder.add(even, odd)


def _quad_sums(builder, m):
    """The 16 sums of 4 adjacent lanes of the 64-lane int32 m (pairs first: pmaddwd's shape)."""
    wide32, pairs = m.type, ir.VectorType(_I32, 2 * LANES)
    even = builder.shuffle_vector(m, ir.Constant(wide32, ir.Undefined), ir.Constant(pairs, list(range(0, 4 * LANES, 2))))
    odd = builder.shuffle_vector(m, ir.Constant(wide32, ir.Undefined), ir.Constant(pairs, list(range(1, 4 * LANES, 2))))
    m2 = builder.add(even, odd)
    even = builder.shuffle_vector(m2, ir.Constant(pairs, ir.Undefined), ir.Constant(_VEC, list(range(0, 2 * LANES, 2))))
    odd = builder.shuffle_vector(m2, ir.Constant(pairs, ir.Undefined), ir.Constant(_VEC, list(range(1, 2 * LANES, 2))))
    return builder.add(even, odd)


@intrinsic
def isplat(typingctx, x):
    """All 16 lanes = x (as int32, wrapping)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.int32))
    return i32x16(x), codegen


@intrinsic
def iadd(typingctx, a, b):
    """a + b in each lane, wrapping."""
    if not (a == i32x16 and b == i32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def imul(typingctx, a, b):
    """a * b in each lane, wrapping."""
    if not (a == i32x16 and b == i32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.mul(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def iload(typingctx, arr, index, n):
    """The n int32 from arr[index] along the last axis in lanes 0..n-1, zeros after."""
    _check(arr, index, (types.int32,))

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], _VEC)
        return _load_lanes(builder, ptr, context.cast(builder, args[2], sig.args[2], types.int64), _I32)
    return i32x16(arr, index, n), codegen


def _store(builder, value, ptr, n, elem):
    """Lanes 0..n-1 of value (a vector of elem) to ptr: whole, the first 8, or lane by lane."""
    with builder.if_else(builder.icmp_signed(">=", n, ir.Constant(_I64, LANES)), likely=True) as (full, partial):
        with full:
            builder.store(value, ptr, align=1)
        with partial:
            with builder.if_else(builder.icmp_signed("==", n, ir.Constant(_I64, LANES // 2))) as (half, other):
                with half:
                    low = builder.shuffle_vector(value, ir.Constant(value.type, ir.Undefined),
                                                 ir.Constant(ir.VectorType(_I32, LANES // 2), list(range(LANES // 2))))
                    builder.store(low, builder.bitcast(ptr, low.type.as_pointer()), align=1)
                with other:
                    items = builder.bitcast(ptr, elem.as_pointer())
                    for lane in range(LANES - 1):
                        with builder.if_then(builder.icmp_signed(">", n, ir.Constant(_I64, lane))):
                            builder.store(builder.extract_element(value, ir.Constant(_I32, lane)),
                                          builder.gep(items, [ir.Constant(_I32, lane)]), align=1)


@intrinsic
def istore(typingctx, arr, index, n, v):
    """Write lanes 0..n-1 of v to the int32 arr[index] along the last axis; nothing past them."""
    _check(arr, index, (types.int32,))

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], _VEC)
        _store(builder, args[3], ptr, context.cast(builder, args[2], sig.args[2], types.int64), _I32)
        return context.get_dummy_value()
    return types.none(arr, index, n, i32x16), codegen


@intrinsic
def bstore(typingctx, arr, index, n, v):
    """Write lanes 0..n-1 of v, truncated to bytes (each lane already in int8's range), to
    the int8 arr[index] along the last axis; nothing past them."""
    _check(arr, index, (types.int8,))

    def codegen(context, builder, sig, args):
        bytes16 = ir.VectorType(_I8, LANES)
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], bytes16)
        _store(builder, builder.trunc(args[3], bytes16), ptr,
               context.cast(builder, args[2], sig.args[2], types.int64), _I8)
        return context.get_dummy_value()
    return types.none(arr, index, n, i32x16), codegen


def _minmax(builder, name, a, b):
    vec = a.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec]),
                                        f"llvm.{name}.v{vec.count}i{vec.element.width}")
    return builder.call(fn, [a, b])


FUSED = current().isa == "avx512"  # 64-bit arithmetic shifts by lane (vpsravq)
_PAIRS = ir.VectorType(_I64, LANES // 2)


def _scales(builder, mult, shift):
    """The per-channel vectors of a requantization: mult, mult's odd lanes moved low (the
    odd vpmuldq operand), the left shift, then (FUSED) per 64-bit lane of the even and of
    the odd products: the rounding constant, the tie correction and the shift of
    _requant; else the right shift r, 2^r - 1 and (2^r - 1) >> 1 (and zeros)."""
    zero32, one = _const(0), _const(1)
    left = _minmax(builder, "smax", shift, zero32)
    right = _minmax(builder, "smax", builder.sub(zero32, shift), zero32)
    c32 = _const(32, LANES // 2, _I64)
    odd = builder.bitcast(builder.lshr(builder.bitcast(mult, _PAIRS), c32), _VEC)
    if not FUSED:
        mask = builder.sub(builder.shl(one, right), one)
        return mult, odd, left, right, mask, builder.ashr(mask, one), zero32, zero32, zero32
    pairs = builder.bitcast(right, _PAIRS)
    out = [mult, odd, left]
    for r in (builder.and_(pairs, _const(0xFFFFFFFF, LANES // 2, _I64)), builder.lshr(pairs, c32)):
        rounds = builder.icmp_signed(">", r, _const(0, LANES // 2, _I64))
        nudge = builder.add(_const(1 << 30, LANES // 2, _I64),
                            builder.select(rounds, builder.shl(_const(1 << 30, LANES // 2, _I64), r),
                                           _const(0, LANES // 2, _I64)))
        tie = builder.select(rounds, _const(1 << 31, LANES // 2, _I64), _const(0, LANES // 2, _I64))
        out += [builder.bitcast(v, _VEC) for v in (nudge, tie, builder.add(r, _const(31, LANES // 2, _I64)))]
    return tuple(out)


def _requant(builder, acc, scales, low, top, zero, saturate=True):
    """TFLite's MultiplyByQuantizedMultiplier of acc by `scales` (_scales), then
    clamp(y, low, top) + zero (vectors). saturate=False leaves out the one overflow's check
    (INT32_MIN times INT32_MIN), for multipliers known not to be negative. FUSED, both roundings in one 64-bit shift:
    (ab + 2^30 + 2^(30+r) - 2^31 [ab < 0]) >> (31 + r) for r > 0, nested floor divisions
    being one (the tie term [h < 0] of the rounding shift is [ab < 0]: the two differ only
    where h = 0, whose result is 0 either way)."""
    mult, mult_odd, left = scales[:3]
    c32, c31 = _const(32, LANES // 2, _I64), _const(31, LANES // 2, _I64)
    scaled = builder.shl(acc, left)  # wraps, as TFLite's int32 shift
    a, m, mo = (builder.bitcast(v, _PAIRS) for v in (scaled, mult, mult_odd))
    # sign-extended low and high halves of each 64-bit pair: LLVM's vpmuldq operands
    a_even, m_even, m_odd = (builder.ashr(builder.shl(v, c32), c32) for v in (a, m, mo))
    a_odd = builder.ashr(a, c32)
    even, odd = builder.mul(a_even, m_even), builder.mul(a_odd, m_odd)
    if FUSED:
        nil = _const(0, LANES // 2, _I64)
        ys = []
        for ab, (nudge, tie, down) in ((even, scales[3:6]), (odd, scales[6:9])):
            nudge, tie, down = (builder.bitcast(v, _PAIRS) for v in (nudge, tie, down))
            t = builder.select(builder.icmp_signed("<", ab, nil), tie, nil)
            ys.append(builder.bitcast(builder.ashr(builder.sub(builder.add(ab, nudge), t), down), _VEC))
        y = builder.shuffle_vector(ys[0], ys[1], ir.Constant(_VEC, [v for i in range(0, LANES, 2) for v in (i, LANES + i)]))
        if saturate:  # INT32_MIN is only INT32_MIN squared's 2^31, wrapped: saturated
            y = builder.add(y, builder.sext(builder.icmp_signed("==", y, _const(_INT_MIN)), _VEC))
    else:
        right, mask, half = scales[3:6]
        nudge = _const(1 << 30, LANES // 2, _I64)
        even, odd = builder.add(even, nudge), builder.add(odd, nudge)
        # bits 31..62 of each sum: the even lanes' to the low half, the odd lanes' to the high (a blend)
        even = builder.bitcast(builder.lshr(even, c31), _VEC)
        odd = builder.bitcast(builder.shl(odd, _const(1, LANES // 2, _I64)), _VEC)
        h = builder.shuffle_vector(even, odd, ir.Constant(_VEC, [l + LANES * (l % 2) for l in range(LANES)]))
        if saturate:
            h = builder.add(h, builder.sext(builder.icmp_signed("==", h, _const(_INT_MIN)), _VEC))
        threshold = builder.sub(half, builder.ashr(h, _const(31)))
        up = builder.icmp_signed(">", builder.and_(h, mask), threshold)
        y = builder.add(builder.ashr(h, right), builder.zext(up, _VEC))
    y = _minmax(builder, "smin", _minmax(builder, "smax", y, low), top)
    return builder.add(y, zero)


def _bounds(builder, zero, lo, hi):
    """clamp(y + zero, lo, hi) as clamp(y, lo - zero, hi - zero) + zero (no int32
    overflow): the vectors lo - zero, hi - zero, zero of int64 scalars."""
    return (_splat(builder, builder.trunc(builder.sub(lo, zero), _I32)),
            _splat(builder, builder.trunc(builder.sub(hi, zero), _I32)), _splat(builder, builder.trunc(zero, _I32)))


@intrinsic
def vrequant(typingctx, acc, mult, shift, zero, lo, hi):
    """In each lane, requant.to_8bit(acc, mult, shift, zero, lo, hi): TFLite's
    MultiplyByQuantizedMultiplier (an int32 left shift, the saturating rounding doubling
    high multiply, the rounding right shift), then the zero point and the clamp; for
    shifts in -31..31, as QuantizeMultiplier makes them.
      high multiply  (a b + 2^30) >> 31, the 64-bit products of the even and of the odd
                     lanes (vpmuldq) with the result's 32 bits picked from each: gemmlowp's
                     nudge of -2^30 + 1 and truncating division give the same for a
                     negative product; the one overflow (both INT32_MIN) is the one result
                     that reads INT32_MIN, saturated to INT32_MAX
      divide by 2^r  gemmlowp's own int32 form: (h >> r) + (remainder > threshold)"""
    if not (acc == i32x16 and mult == i32x16 and shift == i32x16):
        return None

    def codegen(context, builder, sig, args):
        zero, lo, hi = (context.cast(builder, v, t, types.int64) for v, t in zip(args[3:], sig.args[3:]))
        return _requant(builder, args[0], _scales(builder, args[1], args[2]), *_bounds(builder, zero, lo, hi))
    return i32x16(i32x16, i32x16, i32x16, zero, lo, hi), codegen


SCALES = types.UniTuple(i32x16, 9)
BOUNDS = types.UniTuple(i32x16, 3)


@intrinsic
def vscales(typingctx, mult, shift):
    """The per-channel vectors of vrequant for mult and shift, computed once for the
    many pixels of a tile (vrequant_with)."""
    if not (mult == i32x16 and shift == i32x16):
        return None

    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, SCALES, _scales(builder, args[0], args[1]))
    return SCALES(i32x16, i32x16), codegen


@intrinsic
def vbounds(typingctx, zero, lo, hi):
    """The clamp and zero point vectors of vrequant, once for a tile (vrequant_with)."""
    if not all(isinstance(v, types.Integer) for v in (zero, lo, hi)):
        return None

    def codegen(context, builder, sig, args):
        zero, lo, hi = (context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args))
        return context.make_tuple(builder, BOUNDS, _bounds(builder, zero, lo, hi))
    return BOUNDS(zero, lo, hi), codegen


@intrinsic
def vrequant_with(typingctx, acc, scales, bounds):
    """vrequant(acc, mult, shift, zero, lo, hi) from scales = vscales(mult, shift) and
    bounds = vbounds(zero, lo, hi)."""
    if not (acc == i32x16 and scales == SCALES and bounds == BOUNDS):
        return None

    def codegen(context, builder, sig, args):
        scales = cgutils.unpack_tuple(builder, args[1], 9)
        return _requant(builder, args[0], scales, *cgutils.unpack_tuple(builder, args[2], 3))
    return i32x16(i32x16, SCALES, BOUNDS), codegen



@intrinsic
def vfinish6(typingctx, out, acc, p, ends, j, accs, accumulate):
    """Vector j (a literal) of pixels p..p+5 of a GEMM tile: the sums accs[i] (started
    from the per-channel and per-pixel parts) requantized (as vrequant_with) into the
    int8 out[p + i, c_j:c_j + n_j], or, where `accumulate` (a literal), added into the
    int32 acc[p + i, c_j:c_j + n_j]. Pixels past the array's rows, and a vector with
    n_j = 0, are skipped. ends: (c_j, n_j, k_j, scales_j) for each vector j of the tile,
    then the bounds.
    One intrinsic rather than Numba code inlined per pixel: Numba's front end copied the
    requantization's IR for each of a tile's 24 outputs (33 s of a first compile). And
    vector-major, so that the six pixels' requantizations share scales_j in registers."""
    _check(out, types.UniTuple(types.int64, 2), (types.int8,))
    _check(acc, types.UniTuple(types.int64, 2), (types.int32,))
    if not isinstance(j, types.IntegerLiteral):
        return None
    if not (isinstance(ends, types.BaseTuple) and len(ends) % 4 == 1 and 4 * j.literal_value < len(ends) - 1
            and accs == types.UniTuple(i32x16, 6) and isinstance(accumulate, types.BooleanLiteral)):
        return None
    v, adding = j.literal_value, accumulate.literal_value

    def codegen(context, builder, sig, args):
        out_t, acc_t, p_t, ends_t = sig.args[:4]
        array_t, array = (acc_t, args[1]) if adding else (out_t, args[0])
        height = cgutils.unpack_tuple(builder, context.make_array(array_t)(context, builder, array).shape, 2)[0]
        items = cgutils.unpack_tuple(builder, args[3], len(ends_t))
        c = context.cast(builder, items[4 * v], ends_t[4 * v], types.int64)
        n = context.cast(builder, items[4 * v + 1], ends_t[4 * v + 1], types.int64)
        scales = cgutils.unpack_tuple(builder, items[4 * v + 3], 9)
        bounds = cgutils.unpack_tuple(builder, items[-1], 3)
        vectors = cgutils.unpack_tuple(builder, args[5], 6)
        p = context.cast(builder, args[2], p_t, types.int64)
        at = types.UniTuple(types.int64, 2)
        bytes16 = ir.VectorType(_I8, LANES)
        with builder.if_then(builder.icmp_signed(">", n, ir.Constant(_I64, 0)), likely=True):
            for i in range(6):
                pixel = builder.add(p, ir.Constant(_I64, i))
                with builder.if_then(builder.icmp_signed("<", pixel, height), likely=True):
                    a = vectors[i]
                    index = context.make_tuple(builder, at, [pixel, c])
                    if adding:
                        ptr = _pointer(context, builder, acc_t, args[1], at, index, _VEC)
                        _store(builder, builder.add(a, _load_lanes(builder, ptr, n, _I32)), ptr, n, _I32)
                    else:
                        y = _requant(builder, a, scales, *bounds, saturate=False)  # qpointwise's check
                        ptr = _pointer(context, builder, out_t, args[0], at, index, bytes16)
                        _store(builder, builder.trunc(y, bytes16), ptr, n, _I8)
        return context.get_dummy_value()
    return types.none(out, acc, p, ends, j, accs, accumulate), codegen

# For the depthwise, the stem and ADD (qdepthwise.py, qconv.py, qops.py): widening loads
# of 8- and 16-bit lanes, lane broadcasts, 16-bit pair products, a narrowing clamp.

def _load_lanes(builder, ptr, n, elem):
    """Lanes 0..n-1 of a <16 x elem> at ptr, zeros after: a plain load when all 16 are
    live, else a masked load (cheap with AVX-512; LLVM splits it elsewhere)."""
    vec = ir.VectorType(elem, LANES)
    with builder.if_else(builder.icmp_signed(">=", n, ir.Constant(_I64, LANES)), likely=True) as (yes, no):
        with yes:
            a, a_block = builder.load(ptr, align=1), builder.block
        with no:
            fnty = ir.FunctionType(vec, [vec.as_pointer(), _I32, ir.VectorType(ir.IntType(1), LANES), vec])
            fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.v16i{elem.width}.p0")
            b = builder.call(fn, [ptr, ir.Constant(_I32, 1), _lane_mask(builder, n), ir.Constant(vec, None)])
            b_block = builder.block
    value = builder.phi(vec)
    value.add_incoming(a, a_block)
    value.add_incoming(b, b_block)
    return value


@intrinsic
def xload(typingctx, arr, index, n):
    """The n int8 or int16 values at arr[index] along the last axis, sign-extended into
    int32 lanes 0..n-1; zeros after (lanes >= n are not read)."""
    _check(arr, index, (types.int8, types.int16))

    def codegen(context, builder, sig, args):
        elem = ir.IntType(sig.args[0].dtype.bitwidth)
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], ir.VectorType(elem, LANES))
        n = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.sext(_load_lanes(builder, ptr, n, elem), _VEC)
    return i32x16(arr, index, n), codegen


@intrinsic
def isub(typingctx, a, b):
    """a - b in each lane, wrapping."""
    if not (a == i32x16 and b == i32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.sub(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def ilane(typingctx, v, lane):
    """All 16 lanes = lane `lane` (a constant) of v."""
    if not (v == i32x16 and isinstance(lane, types.IntegerLiteral)):
        return None
    k = lane.literal_value

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], ir.Constant(_VEC, ir.Undefined), ir.Constant(_VEC, [k] * LANES))
    return i32x16(i32x16, lane), codegen


@intrinsic
def pdot(typingctx, acc, a, b):
    """acc + in each lane: lo16(a) lo16(b) + hi16(a) hi16(b), the 16-bit halves signed
    (vpdpwssd with AVX-512 VNNI; elsewhere pmaddwd and an add in plain IR, which LLVM
    makes one vpdpwssd where there is AVX-VNNI).
    Exact while each pair's sum fits int32 (any two products of 9-bit values)."""
    if not (acc == i32x16 and a == i32x16 and b == i32x16):
        return None

    def codegen(context, builder, sig, args):
        if DOT == "avx512vnni":  # the intrinsic: LLVM's own match widens broadcasts and back
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                                "llvm.x86.avx512.vpdpwssd.512")
            return builder.call(fn, list(args))
        halves = ir.VectorType(_I16, 2 * LANES)
        return builder.add(args[0], _pair_products(builder, builder.bitcast(args[1], halves),
                                                   builder.bitcast(args[2], halves)))
    return i32x16(i32x16, i32x16, i32x16), codegen


@intrinsic
def vrequant32(typingctx, acc, mult, shift, zero, lo, hi):
    """vrequant's integers in fewer instructions: int32 lanes but for the products. The
    high multiply is two 32x32->64 multiplies (pmuldq) of the even and the odd lanes, the
    bits 31..62 of each product + 2^30 put back in place; the one overflow (INT32_MIN
    squared) is the one high of INT32_MIN (a true one is at least 1 - 2^31), saturated to
    INT32_MAX. RoundingDivideByPOT as TFLite writes it: (h >> r) + ((h & mask) > threshold)."""
    if not (acc == i32x16 and mult == i32x16 and shift == i32x16):
        return None

    def codegen(context, builder, sig, args):
        acc, mult, shift = args[:3]
        zero, lo, hi = (context.cast(builder, v, t, types.int32) for v, t in zip(args[3:], sig.args[3:]))
        wide = ir.VectorType(_I64, LANES // 2)
        c32, c0 = _const(32, LANES // 2, _I64), _const(0)
        left = _minmax(builder, "smax", shift, c0)
        right = _minmax(builder, "smax", builder.sub(c0, shift), c0)
        a = builder.bitcast(builder.shl(acc, left), wide)  # wraps, as TFLite's int32 shift
        b = builder.bitcast(mult, wide)
        low = lambda v: builder.ashr(builder.shl(v, c32), c32)  # noqa: E731  (even lanes, sign-extended)
        nudge = _const(1 << 30, LANES // 2, _I64)
        even = builder.add(builder.mul(low(a), low(b)), nudge)
        odd = builder.add(builder.mul(builder.ashr(a, c32), builder.ashr(b, c32)), nudge)
        even = builder.bitcast(builder.lshr(even, _const(31, LANES // 2, _I64)), _VEC)  # bits 31..62 in the low half
        odd = builder.bitcast(builder.shl(odd, _const(1, LANES // 2, _I64)), _VEC)  # ... in the high half
        high = builder.shuffle_vector(even, odd, ir.Constant(_VEC, [l + LANES * (l % 2) for l in range(LANES)]))
        high = builder.select(builder.icmp_signed("==", high, _const(_INT_MIN)), _const(_INT_MAX), high)
        mask = builder.sub(builder.shl(_const(1), right), _const(1))
        threshold = builder.sub(builder.ashr(mask, _const(1)), builder.ashr(high, _const(31)))  # + 1 where h < 0
        up = builder.zext(builder.icmp_signed(">", builder.and_(high, mask), threshold), _VEC)
        y = builder.add(builder.ashr(high, right), up)
        y = _minmax(builder, "smin", _minmax(builder, "smax", y, _splat(builder, builder.sub(lo, zero))),
                    _splat(builder, builder.sub(hi, zero)))
        return builder.add(y, _splat(builder, zero))
    return i32x16(i32x16, i32x16, i32x16, zero, lo, hi), codegen


@intrinsic
def low16(typingctx, w):
    """w's lanes with their high 16 bits cleared: the operand of vmadd16 (w within int16)."""
    if w != i32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.and_(args[0], _const(0xFFFF))
    return i32x16(i32x16), codegen


@intrinsic
def vmadd16(typingctx, acc, x, w):
    """acc + x * w in each lane, x within int16's range and w = low16(w) of such a value: on
    x86, pdot's pair product (vpdpwssd with VNNI, else pmaddwd and an add), whose high
    halves multiply x's sign bits by w's zeros; no 32-bit multiply (vpmulld: two cycles a
    512-bit vector on Zen 4, the depthwise's bound). A plain multiply-add elsewhere."""
    if not (acc == i32x16 and x == i32x16 and w == i32x16):
        return None

    def codegen(context, builder, sig, args):
        acc, x, w = args
        if not X86:
            signed = builder.ashr(builder.shl(w, _const(16)), _const(16))
            return builder.add(acc, builder.mul(x, signed))
        if DOT == "avx512vnni":
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                                "llvm.x86.avx512.vpdpwssd.512")
            return builder.call(fn, [acc, x, w])
        halves = ir.VectorType(_I16, 2 * LANES)
        return builder.add(acc, _pair_products(builder, builder.bitcast(x, halves), builder.bitcast(w, halves)))
    return i32x16(i32x16, i32x16, i32x16), codegen


@intrinsic
def xpairs16(typingctx, arr, index, x_zero):
    """The 16 int8 at arr[index] minus x_zero as int16, in pairs: lane l holds values 2l
    (low half) and 2l + 1 (high half), for l < 8; lanes 8..15 are 0. All 16 bytes read."""
    _check(arr, index, (types.int8,))

    def codegen(context, builder, sig, args):
        bytes16, halves = ir.VectorType(_I8, LANES), ir.VectorType(_I16, LANES)
        ptr = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1], bytes16)
        z = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int32), _I16)
        v = builder.sub(builder.sext(builder.load(ptr, align=1), halves), _splat(builder, z))
        wide = builder.shuffle_vector(v, ir.Constant(halves, None), ir.Constant(ir.VectorType(_I32, 2 * LANES), list(range(2 * LANES))))
        return builder.bitcast(wide, _VEC)
    return i32x16(arr, index, x_zero), codegen
