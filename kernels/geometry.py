"""Where things are: the rows a 3x3 window reads, and a block's tensors and weights.

A pass keeps everything in three flat arrays: the arena (float32 activations), params
(float32 packed weights) and ints (every block's slice edges). A block's record, a row
of the plan's table (mnv2engine/program.py), says where its parts lie in them; these
functions make the views, the same way for every evaluation. Offsets count elements.
"""
from numba import njit

from .gemm import PANEL, panels_shape
from .pairs import packed_shape as pairs_shape, uses_pairs
from .stem import packed_shape as stem_shape


@njit(cache=True)
def conv_out(size, pad_before, pad_after, stride):
    """Output rows (or columns) of a 3x3 conv over `size` input rows."""
    return (size + pad_before + pad_after - 3) // stride + 1


@njit(cache=True)
def window_top(oy, stride, pad_top):
    """The input row under the top taps of output row oy's window (< 0: the padding)."""
    return oy * stride - pad_top


@njit(cache=True)
def first_row_needed(oy, stride, pad_top):
    """The first input row that output row oy's window reads."""
    return max(window_top(oy, stride, pad_top), 0)


@njit(cache=True)
def last_row_needed(oy, stride, pad_top, height):
    """The last input row that output row oy's window reads, of `height` rows."""
    return min(window_top(oy, stride, pad_top) + 2, height - 1)


@njit(cache=True)
def expanded_height(b):
    """Rows of block b's expansion: the stem's output rows (block 0), or its input's."""
    return conv_out(b.h, b.exp_top, b.exp_bottom, b.exp_stride) if b.stem != 0 else b.h


@njit(cache=True)
def expanded_width(b):
    return conv_out(b.w, b.exp_left, b.exp_right, b.exp_stride) if b.stem != 0 else b.w


@njit(cache=True, inline="always")  # returns views: inlined, so no kernel returns one
def block_input(arena, b):
    """Block b's input [n, h, w, cin] (not block 0's: that one is the caller's image)."""
    return arena[b.x:b.x + b.n * b.h * b.w * b.cin].reshape((b.n, b.h, b.w, b.cin))


@njit(cache=True, inline="always")
def block_output(arena, b):
    return arena[b.y:b.y + b.n * b.ho * b.wo * b.cout].reshape((b.n, b.ho, b.wo, b.cout))


@njit(cache=True, inline="always")
def panels(params, at, rows, columns):
    """The weights [rows, columns] packed as GEMM panels (pack_panels) at params[at:]."""
    count = -(-columns // PANEL)
    return params[at:at + count * rows * PANEL].reshape((count, rows, PANEL))


@njit(cache=True, inline="always")
def slice_bounds(ints, b):
    """The t + 1 channel edges of block b's slices: slice s is bounds[s] .. bounds[s + 1]."""
    return ints[b.bounds:b.bounds + b.t + 1]


@njit(cache=True)
def expansion_shape(cs, stem, cin):
    """The packed shape of one slice's expansion weights (block.pack_expansion): cs
    channels from cin inputs."""
    if stem:
        return stem_shape(9 * cin, cs)
    return pairs_shape(cin, cs) if uses_pairs(cs, cin) else panels_shape(cin, cs)


@njit(cache=True)
def expansion_size(cs, stem, cin):
    a, b, c = expansion_shape(cs, stem, cin)
    return a * b * c


@njit(cache=True, inline="always")  # returns views: inlined, so no kernel returns one
def slice_weights(params, ints, b, s):
    """Slice s of block b: its expansion (packed) and bias, depthwise [3, 3, cs] and
    bias, the projection's rows for its channels (panels), and the projection's bias."""
    bounds = slice_bounds(ints, b)
    stem = b.stem != 0
    we_at = b.we  # the slices' expansion weights lie one after the other
    for k in range(s):
        we_at += expansion_size(bounds[k + 1] - bounds[k], stem, b.cin)
    c0, c1 = bounds[s], bounds[s + 1]
    cs = c1 - c0
    we = params[we_at:we_at + expansion_size(cs, stem, b.cin)].reshape(expansion_shape(cs, stem, b.cin))
    wd = params[b.wd + 9 * c0:b.wd + 9 * c1].reshape((3, 3, cs))
    wp = panels(params, b.wp, b.hidden, b.cout)[:, c0:c1]
    return we, params[b.be + c0:b.be + c1], wd, params[b.bd + c0:b.bd + c1], wp, params[b.bp:b.bp + b.cout]
