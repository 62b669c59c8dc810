# The instruction-set level of the direct (direct.pyx) and pooling (pool.pyx) kernels: each
# module compiles its C micro-kernels three times (AVX-512, AVX2+FMA, baseline), each with
# that level's vector width, and picks the level once at import.  Included by both modules
# before their own C code, which uses the macros defined here.

cdef extern from *:
    """
    #include <stddef.h>

    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #  define FC_X86 1
    #  define FC_T512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
    #  define FC_T256 __attribute__((target("avx2,fma")))
    #else
    #  define FC_X86 0
    #  define FC_T512
    #  define FC_T256
    #endif
    #define FC_TBASE
    #define FC_INL static inline __attribute__((always_inline))
    /* where mask m is set (all ones): b, else a (V the vector type, M its integer mask type) */
    #define FC_BLEND(V, M, a, b, m) ((V)(((M)(a) & ~(m)) | ((M)(b) & (m))))

    static int fc_isa_detect(void) {
    #if FC_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")
                && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            return 2;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            return 1;
    #endif
        return 0;
    }
    /* vector bytes of ISA level `isa` */
    static ptrdiff_t fc_vec_bytes(int isa) { return isa == 2 ? 64 : isa == 1 ? 32 : 16; }
    """
    int fc_isa_detect() noexcept nogil
    Py_ssize_t fc_vec_bytes(int isa) noexcept nogil


cdef int _DETECTED = fc_isa_detect()
cdef int _isa = _DETECTED
_ISA_NAMES = ("baseline", "avx2", "avx512")


def isa():
    """The instruction-set level the kernels run at: "avx512", "avx2" or "baseline"."""
    return _ISA_NAMES[_isa]


def set_isa(name=None):
    """Run the kernels at a lower instruction-set level than detected (tests), or back at the
    detected one (``None``).  Raises ``ValueError`` for a level this CPU lacks."""
    global _isa
    level = _DETECTED if name is None else _ISA_NAMES.index(name)
    if level > _DETECTED:
        raise ValueError(f"this CPU does not support {name!r} (detected: {_ISA_NAMES[_DETECTED]})")
    _isa = level


def block_channels(Py_ssize_t itemsize):
    """Channels per vector (one channel block) at the current level, for elements of
    ``itemsize`` bytes."""
    return fc_vec_bytes(_isa) // itemsize
