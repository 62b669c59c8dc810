"""Explicit SIMD vectors for the numba backend's direct kernels.

LLVM's loop vectoriser only vectorises innermost loops, and it unrolls them
four times on top of the vector width, so a loop over 32 channels never runs
its vector body (64 elements per iteration) and falls to scalar code; nor does
it keep a tile of accumulators in registers across an outer loop.  The direct
kernels therefore spell out their register tiles with the few operations here:
a ``Vec`` is one 64-byte machine vector (16 float32 or 8 float64 lanes: one
AVX-512 register, two AVX2 registers), loaded from and stored to a contiguous
array at a flat element index, optionally masked to its first ``n`` lanes (the
channel tail; masked-off lanes load as zero and are never stored).

All operations are IEEE (no fast-math): ``vfma`` is ``llvm.fmuladd`` (fused
where the target has FMA), so NaN and inf propagate as in the scalar code.
Indices are not bounds-checked: callers keep every lane they touch in range.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

# Bytes per vector: one AVX-512 register.  Narrower machines split each operation.
VEC_BYTES = 64


class Vec(types.Type):
    """A machine vector of ``lanes`` elements of ``dtype`` (a numba float type)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VEC_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vec({dtype}x{self.lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.lanes))


def _check_array(arr):
    if not isinstance(arr, types.Array) or arr.layout != "C" or not isinstance(arr.dtype, types.Float):
        raise TypeError(f"SIMD access needs a C-contiguous float array, got {arr}")


def _vec_ptr(context, builder, aryty, ary, idx, vty):
    """Pointer to element ``idx`` of the array's data, typed as a pointer to ``vty``."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [idx]), vty.as_pointer())


def _mask(builder, lanes, n):
    """<lanes x i1>: lane < n."""
    i32 = ir.IntType(32)
    iota = ir.Constant(ir.VectorType(i32, lanes), [ir.Constant(i32, k) for k in range(lanes)])
    nv = builder.trunc(n, i32) if n.type.width > 32 else builder.sext(n, i32) if n.type.width < 32 else n
    splat = builder.insert_element(ir.Constant(ir.VectorType(i32, lanes), None), nv, ir.Constant(i32, 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
    return builder.icmp_signed("<", iota, splat)


def _vec_suffix(vty):
    return f"v{vty.count}{'f32' if isinstance(vty.element, ir.FloatType) else 'f64'}"


def _masked_fn(builder, vty, kind):
    ptr = vty.as_pointer()
    suffix = f"{_vec_suffix(vty)}.p0"
    mty = ir.VectorType(ir.IntType(1), vty.count)
    if kind == "load":
        fnty = ir.FunctionType(vty, [ptr, ir.IntType(32), mty, vty])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, ptr, ir.IntType(32), mty])
    return cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.{kind}.{suffix}")


@intrinsic
def vload(typingctx, arr, idx):
    """The vector at ``arr.flat[idx : idx + lanes]``."""
    _check_array(arr)
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1], context.get_value_type(vt))
        return builder.load(ptr, align=sig.args[0].dtype.bitwidth // 8)
    return vt(arr, idx), codegen


@intrinsic
def vload_n(typingctx, arr, idx, n):
    """Like :func:`vload`, but only the first ``n`` lanes are read; the others are zero."""
    _check_array(arr)
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1], vty)
        fn = _masked_fn(builder, vty, "load")
        align = ir.Constant(ir.IntType(32), sig.args[0].dtype.bitwidth // 8)
        return builder.call(fn, [ptr, align, _mask(builder, vt.lanes, args[2]), ir.Constant(vty, None)])
    return vt(arr, idx, n), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """``arr.flat[idx : idx + lanes] = v``."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1], context.get_value_type(sig.args[2]))
        builder.store(args[2], ptr, align=sig.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(arr, idx, v), codegen


@intrinsic
def vstore_n(typingctx, arr, idx, v, n):
    """Like :func:`vstore`, but only the first ``n`` lanes are written."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(sig.args[2])
        ptr = _vec_ptr(context, builder, sig.args[0], args[0], args[1], vty)
        fn = _masked_fn(builder, vty, "store")
        align = ir.Constant(ir.IntType(32), sig.args[0].dtype.bitwidth // 8)
        builder.call(fn, [args[2], ptr, align, _mask(builder, sig.args[2].lanes, args[3])])
        return context.get_dummy_value()
    return types.none(arr, idx, v, n), codegen


@intrinsic
def vsplat(typingctx, arr, value):
    """A vector of ``arr``'s element type with every lane ``value``."""
    _check_array(arr)
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        v = context.cast(builder, args[1], sig.args[1], vt.dtype)
        i32 = ir.IntType(32)
        one = builder.insert_element(ir.Constant(vty, None), v, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, vt.lanes), [0] * vt.lanes))
    return vt(arr, value), codegen


@intrinsic
def vzero(typingctx, arr):
    """A zero vector of ``arr``'s element type."""
    _check_array(arr)
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)
    return vt(arr), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane by lane (fused where the machine has FMA)."""
    if not (isinstance(a, Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(sig.args[0])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                            f"llvm.fmuladd.{_vec_suffix(vty)}")
        return builder.call(fn, list(args))
    return a(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):
    """``a + b`` lane by lane."""
    if not (isinstance(a, Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return a(a, b), codegen


@intrinsic
def lanes(typingctx, arr):
    """The number of lanes of a vector of ``arr``'s element type (a compile-time constant)."""
    _check_array(arr)
    n = Vec(arr.dtype).lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(arr), codegen


@intrinsic
def vbroadcast(typingctx, arr, idx):
    """A vector with every lane ``arr.flat[idx]`` (one broadcast load; no negative-index
    wraparound, unlike ``arr[idx]``)."""
    _check_array(arr)
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        v = builder.load(builder.gep(data, [args[1]]), align=sig.args[0].dtype.bitwidth // 8)
        i32 = ir.IntType(32)
        one = builder.insert_element(ir.Constant(vty, None), v, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, vt.lanes), [0] * vt.lanes))
    return vt(arr, idx), codegen


@intrinsic
def vrot_groups(typingctx, v, group):
    """Rotate the lanes of ``v`` by one within each run of ``group`` lanes:
    lane ``g * group + o`` takes lane ``g * group + (o + 1) % group``.  ``group`` must be
    a compile-time constant dividing the lane count (one in-register shuffle)."""
    if not isinstance(v, Vec) or not isinstance(group, types.IntegerLiteral):
        return None
    g = group.literal_value
    if g < 1 or v.lanes % g:
        raise TypeError(f"vrot_groups: group {g} must divide {v.lanes} lanes")
    mask = [(k // g) * g + (k % g + 1) % g for k in range(v.lanes)]

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        return builder.shuffle_vector(args[0], args[0], ir.Constant(ir.VectorType(i32, v.lanes), mask))
    return v(v, group), codegen


@intrinsic
def vmul(typingctx, a, b):
    """``a * b`` lane by lane."""
    if not (isinstance(a, Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])
    return a(a, b), codegen


@intrinsic
def vmax(typingctx, a, b):
    """The running maximum ``b if (b > a or b is NaN) else a``, lane by lane: a NaN in
    either operand wins (once NaN, stays NaN), and of two equal values (``-0.0``,
    ``+0.0``) ``a`` is kept, exactly as the scalar update ``if v > m or v != v: m = v``."""
    if not (isinstance(a, Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        a_, b_ = args
        # written as two selects, which x86 lowers to max + a masked move of the NaN lanes
        # (one select on an or of both tests costs a fourth instruction)
        larger = builder.select(builder.fcmp_ordered(">", b_, a_), b_, a_)
        return builder.select(builder.fcmp_unordered("uno", b_, b_), b_, larger)
    return a(a, b), codegen


@intrinsic
def vdiv(typingctx, a, b):
    """``a / b`` lane by lane (IEEE division, as the scalar code)."""
    if not (isinstance(a, Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fdiv(args[0], args[1])
    return a(a, b), codegen
