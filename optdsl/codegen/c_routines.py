"""The C back end's program-independent routines, compiled once (per compiler, flags and CPU)
and linked into every generated step, instead of compiled again with each program:

- the storage conversions: a block of a column stored in another dtype than the sweep
  computes in is loaded into a staging buffer (``optdsl_load_F32``/``_F64``) and stored back
  from one (``optdsl_store_F32``/``_F64``), exact where the value fits and to nearest even
  otherwise, as torch converts (float64 to float16 or bfloat16 through float32; a NaN to
  torch's quiet NaN), or stochastically for bfloat16 with optdsl.runtime.rounding's hash,
  bit for bit (a NaN keeps its high bits, as the Triton kernels do);
- a block's float64 partial sum in a fixed order and its maximum (``optdsl_sum_*``,
  ``optdsl_max_*``), and the row and column statistics a sweep accumulates
  (``optdsl_rows_*``, ``optdsl_cols_*``; optdsl.ir.stages.fused_stats).

These vectorized loops, for four storage dtypes and two compute dtypes, were most of a
generated step's compile time (about 0.3 s of Adam's 0.44 s with gcc 12 at -O3); a step's own
source keeps the inline test that skips a conversion when the column is stored in the
compute dtype (optdsl.codegen.c_prelude's ``optdsl_read_*`` and ``optdsl_write_*``).
optdsl.runtime.c_build compiles ``sources()`` (two translation units, in parallel) into one
cached object file and links it into each step's shared object; a step's cache key holds
those sources too. ``header()`` is what both compile against: the block size, dtype codes,
the element helpers and the routines' declarations, whose hidden visibility keeps each
shared object's copy to itself.
"""

from __future__ import annotations

BLOCK = 1024  # elements of one parameter handled by one call of a sweep's block function

# Storage dtype codes of the pointer table's dtype column.
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}

_HEADER = r"""#define OPTDSL_BLOCK @BLOCK@
#define OPTDSL_F32 0
#define OPTDSL_F64 1
#define OPTDSL_F16 2
#define OPTDSL_BF16 3

/* -- element helpers with NumPy's meaning ---------------------------------------------- */
/* np.minimum / np.maximum: NaN propagates; of equal values (0.0, -0.0) the second. */
static inline float optdsl_min_f(float a, float b) { return a != a ? a : (a < b ? a : b); }
static inline float optdsl_max_f(float a, float b) { return a != a ? a : (a > b ? a : b); }
static inline double optdsl_min_d(double a, double b) { return a != a ? a : (a < b ? a : b); }
static inline double optdsl_max_d(double a, double b) { return a != a ? a : (a > b ? a : b); }
/* np.sign: -0.0 gives 0.0, NaN gives itself. */
static inline float optdsl_sign_f(float x) {
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == 0.0f ? 0.0f : x));
}
static inline double optdsl_sign_d(double x) {
    return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : (x == 0.0 ? 0.0 : x));
}

/* -- routines compiled once and linked in (optdsl.codegen.c_routines) ------------------ */
#define OPTDSL_HIDDEN __attribute__((visibility("hidden")))
/* Elements [lo, lo + m) of the column at p, stored as dtype code d, into buf. */
OPTDSL_HIDDEN void optdsl_load_F32(const void *p, int d, int64_t lo, int64_t m, float *buf);
OPTDSL_HIDDEN void optdsl_load_F64(const void *p, int d, int64_t lo, int64_t m, double *buf);
/* v[0, m) into elements [lo, lo + m) of the column at p, stored as dtype code d; a bfloat16
   column rounds stochastically when sr is set, with the stream of (seed, tensor, stream). */
OPTDSL_HIDDEN void optdsl_store_F32(void *p, int d, int64_t lo, int64_t m, const float *v,
                                    int sr, int64_t seed, int64_t tensor, int64_t stream);
OPTDSL_HIDDEN void optdsl_store_F64(void *p, int d, int64_t lo, int64_t m, const double *v,
                                    int sr, int64_t seed, int64_t tensor, int64_t stream);
/* A block's float64 partial sum, in a fixed order; its maximum, from acc. */
OPTDSL_HIDDEN double optdsl_sum_F32(const float *x, int64_t m);
OPTDSL_HIDDEN double optdsl_sum_F64(const double *x, int64_t m);
OPTDSL_HIDDEN double optdsl_max_F32(const float *x, int64_t m, double acc);
OPTDSL_HIDDEN double optdsl_max_F64(const double *x, int64_t m, double acc);
/* A block's row pieces and column partials (OPTDSL_STATS in optdsl.codegen.c_routines). */
OPTDSL_HIDDEN void optdsl_rows_F32(const float *x, int64_t lo, int64_t m, int64_t cols,
                                   double *seg);
OPTDSL_HIDDEN void optdsl_rows_F64(const double *x, int64_t lo, int64_t m, int64_t cols,
                                   double *seg);
OPTDSL_HIDDEN void optdsl_cols_F32(const float *x, int64_t lo, int64_t m, int64_t rows,
                                   int64_t cols, double *part);
OPTDSL_HIDDEN void optdsl_cols_F64(const double *x, int64_t lo, int64_t m, int64_t rows,
                                   int64_t cols, double *part);
"""

_DEFINITIONS = r"""
/* -- storage conversions -------------------------------------------------------------- */
static inline uint32_t optdsl_bits(float x) { uint32_t b; memcpy(&b, &x, 4); return b; }
static inline float optdsl_float(uint32_t b) { float x; memcpy(&x, &b, 4); return x; }

static inline float optdsl_from_bf16(uint16_t h) { return optdsl_float((uint32_t)h << 16); }

static inline uint16_t optdsl_to_bf16(float x) {  /* round to nearest even; torch's NaN */
    uint32_t b = optdsl_bits(x);
    if (x != x) return 0x7FC0;
    return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

static inline float optdsl_from_f16(uint16_t h) {  /* exact (the FP16 library's method) */
    uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    float norm = optdsl_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    float denorm = optdsl_float((two_w >> 17) | (126u << 23)) - 0.5f;
    uint32_t r = two_w < (1u << 27) ? optdsl_bits(denorm) : optdsl_bits(norm);
    return optdsl_float(sign | r);
}

static inline uint16_t optdsl_to_f16(float f) {  /* round to nearest even, as torch's */
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w = optdsl_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = optdsl_float((bias >> 1) + 0x07800000u) + base;
    uint32_t bits = optdsl_bits(base);
    uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* -- stochastic rounding: optdsl.runtime.rounding's hash ------------------------------- */
static inline uint32_t optdsl_mix32(uint32_t h) {
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    return h;
}

static inline uint32_t optdsl_stream_key(int64_t seed, int64_t tensor, int64_t column) {
    uint32_t key = optdsl_mix32((uint32_t)seed ^ optdsl_mix32((uint32_t)tensor * 0x9E3779B9u));
    return optdsl_mix32(key ^ (uint32_t)(seed >> 32)
                        ^ optdsl_mix32((uint32_t)column * 0x85EBCA6Bu + 1u));
}

static inline uint16_t optdsl_to_bf16_sr(float x, uint32_t key, uint32_t mixed_key,
                                         int64_t offset) {
    uint32_t h = optdsl_mix32((uint32_t)offset ^ key);
    uint32_t noise = optdsl_mix32(h ^ (uint32_t)(offset >> 32) ^ mixed_key);
    uint32_t b = optdsl_bits(x);
    uint32_t r = (x != x) ? (b | 0x400000u) : b + (noise & 0xFFFFu);
    return (uint16_t)(r >> 16);
}

/* -- a block in and out of the compute dtype CT ---------------------------------------- */
#define OPTDSL_CONVERSIONS(CT, S)                                                          \
void optdsl_load_##S(const void *p, int d, int64_t lo, int64_t m, CT *buf) {              \
    if (d == OPTDSL_F32) { const float *x = (const float *)p + lo;                         \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)x[j]; }                                \
    else if (d == OPTDSL_F64) { const double *x = (const double *)p + lo;                  \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)x[j]; }                                \
    else if (d == OPTDSL_F16) { const uint16_t *x = (const uint16_t *)p + lo;              \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)optdsl_from_f16(x[j]); }               \
    else { const uint16_t *x = (const uint16_t *)p + lo;                                   \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)optdsl_from_bf16(x[j]); }              \
}                                                                                           \
void optdsl_store_##S(void *p, int d, int64_t lo, int64_t m, const CT *v,                 \
                      int sr, int64_t seed, int64_t tensor, int64_t stream) {               \
    if (d == OPTDSL_F32) { float *x = (float *)p + lo;                                     \
        for (int64_t j = 0; j < m; j++) x[j] = (float)v[j]; }                               \
    else if (d == OPTDSL_F64) { double *x = (double *)p + lo;                              \
        for (int64_t j = 0; j < m; j++) x[j] = (double)v[j]; }                              \
    else if (d == OPTDSL_F16) { uint16_t *x = (uint16_t *)p + lo;                          \
        for (int64_t j = 0; j < m; j++) x[j] = optdsl_to_f16((float)v[j]); }                \
    else if (!sr) { uint16_t *x = (uint16_t *)p + lo;                                      \
        for (int64_t j = 0; j < m; j++) x[j] = optdsl_to_bf16((float)v[j]); }               \
    else { uint16_t *x = (uint16_t *)p + lo;                                               \
        uint32_t key = optdsl_stream_key(seed, tensor, stream);                             \
        uint32_t mixed = optdsl_mix32(key);                                                 \
        for (int64_t j = 0; j < m; j++)                                                     \
            x[j] = optdsl_to_bf16_sr((float)v[j], key, mixed, lo + j); }                    \
}

/* -- a block's raw partial, in float64, in a fixed order (8 lanes, then the lanes) ------ */
#define OPTDSL_PARTIALS(CT, S)                                                             \
double optdsl_sum_##S(const CT *x, int64_t m) {                                            \
    double lane[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};                              \
    int64_t j = 0;                                                                          \
    for (; j + 8 <= m; j += 8)                                                              \
        for (int l = 0; l < 8; l++) lane[l] += (double)x[j + l];                            \
    for (int l = 0; j < m; j++, l++) lane[l] += (double)x[j];                               \
    return ((lane[0] + lane[1]) + (lane[2] + lane[3]))                                      \
         + ((lane[4] + lane[5]) + (lane[6] + lane[7]));                                     \
}                                                                                           \
double optdsl_max_##S(const CT *x, int64_t m, double acc) {                                \
    for (int64_t j = 0; j < m; j++) acc = optdsl_max_d(acc, (double)x[j]);                  \
    return acc;                                                                             \
}

/* -- row and column statistics of a block (optdsl.ir.stages.fused_stats) --------------- */
/* Rows: block k of a parameter (elements [lo, lo + m), lo = k * BLOCK) writes the float64
   partial of each row piece it holds, row r's at seg[r + k] (one writer per entry: a
   block's first row is at least the previous block's last); optdsl_finish_rows adds each
   row's pieces in block order. Columns: the blocks of column group g (stat_group blocks,
   run in order by one thread: the unit map) add into part + g * nstat at each element's
   statistic index (matrix b's column c: b * cols + c); optdsl_finish_cols adds the groups
   in order. Neither depends on the number of threads. */
#define OPTDSL_STATS(CT, S)                                                                \
void optdsl_rows_##S(const CT *x, int64_t lo, int64_t m, int64_t cols, double *seg) {       \
    int64_t k = lo / OPTDSL_BLOCK;                                                          \
    for (int64_t j = 0; j < m;) {                                                           \
        int64_t r = (lo + j) / cols, end = (r + 1) * cols - lo;                             \
        if (end > m) end = m;                                                               \
        seg[r + k] = optdsl_sum_##S(x + j, end - j);                                        \
        j = end;                                                                            \
    }                                                                                       \
}                                                                                           \
void optdsl_cols_##S(const CT *x, int64_t lo, int64_t m, int64_t rows, int64_t cols,        \
                     double *part) {                                                        \
    for (int64_t j = 0; j < m;) {                                                           \
        int64_t e = lo + j, c = e % cols, end = j + (cols - c);                             \
        if (end > m) end = m;                                                               \
        double *q = part + (e / (rows * cols)) * cols + c;                                  \
        for (int64_t t = 0; t < end - j; t++) q[t] += (double)x[j + t];                     \
        j = end;                                                                            \
    }                                                                                       \
}
"""


# The routines, in two translation units of about equal compile time (compiled in parallel):
# the float32 conversions; the float64 ones with the partials and statistics.
_PARTS = ("OPTDSL_CONVERSIONS(float, F32)\n",
          "OPTDSL_CONVERSIONS(double, F64)\n"
          "OPTDSL_PARTIALS(float, F32)\nOPTDSL_PARTIALS(double, F64)\n"
          "OPTDSL_STATS(float, F32)\nOPTDSL_STATS(double, F64)\n")


def header() -> str:
    """What a generated step and the routines both compile against (this version's block
    size, the dtype codes, the element helpers, the routines' declarations)."""
    return _HEADER.replace("@BLOCK@", str(BLOCK))


def sources() -> tuple[str, ...]:
    """The routines' translation units, compiled once (in parallel) into the one object
    every step links."""
    return tuple(f"/* Routines of optdsl's generated C steps (optdsl.codegen.c_routines), part "
                 f"{k + 1} of {len(_PARTS)},\n * compiled once and linked into every step. Do "
                 f"not edit. */\n#include <math.h>\n#include <stdint.h>\n#include <string.h>\n\n"
                 + header() + _DEFINITIONS + part for k, part in enumerate(_PARTS))
