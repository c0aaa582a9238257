"""The fixed part of every generated C step: the ABI struct the runtime fills
(optdsl.runtime.c_abi mirrors it field for field), storage conversions, the stochastic
rounding hash (optdsl.runtime.rounding's, bit for bit), the element helpers whose NumPy
meaning needs more than one C operator (min, max, sign), and the float64 partial sums of a
block in a fixed order.

Conversions are exact where the value fits and round to nearest even otherwise, as torch
converts: float64 to float16 or bfloat16 goes through float32. A NaN converts to torch's
quiet NaN under round to nearest; under stochastic rounding a bfloat16 keeps the NaN's high
bits (as the Triton kernels do).
"""

from __future__ import annotations

ABI_VERSION = 3
BLOCK = 1024  # elements of one parameter handled by one call of a sweep's block function
MAX_COLUMNS = 64  # pointer-table columns a step may have (TENSORS and the copy)

# Storage dtype codes of the pointer table's dtype column.
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}

PRELUDE = r"""#include <fenv.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define OPTDSL_ABI @ABI@
#define OPTDSL_BLOCK @BLOCK@
#define OPTDSL_F32 0
#define OPTDSL_F64 1
#define OPTDSL_F16 2
#define OPTDSL_BF16 3

/* What the runtime hands a step (optdsl.runtime.c_abi.Args mirrors it). */
typedef struct optdsl_args {
    int64_t n;               /* parameters of the group */
    int64_t ncol;            /* pointer-table columns: TENSORS, then the master's copy */
    void *const *ptr;        /* [n * ncol] data pointers (NULL: column not used) */
    const int8_t *dtype;     /* [n * ncol] storage dtype codes */
    const int64_t *numel;    /* [n] elements of each parameter */
    const double *t;         /* [n] the step number of each parameter's update */
    void *const *sptr;       /* [n * NUM_SCALAR_STATES] scalar-state tensors (float32/64) */
    const int8_t *sdtype;    /* [n * NUM_SCALAR_STATES] their dtype codes */
    double *sval;            /* [n * NUM_SCALAR_STATES] scalar states' new values */
    const double *hyper;     /* [NUM_HYPERS] the group's hyper values, in HYPERS order */
    double inv_grad_scale;   /* 1 / GradScaler's scale (1.0 when the step does not unscale) */
    double *rows;            /* [n * ROW] each parameter's scalar row for the sweep */
    double *red;             /* [n * NUM_REDUCTIONS] finished per-parameter reductions */
    double *totals;          /* [NUM_REDUCTIONS] finished group-wide reductions */
    double *raw;             /* [n * NUM_REDUCTIONS] raw float64 partials of a sweep */
    int64_t nblocks;         /* entries of the block map */
    const int64_t *blocks;   /* [nblocks * 2] (parameter, first element) of each block */
    double *partials;        /* [nblocks * NUM_REDUCTIONS] raw partial of each block */
    int64_t threads;         /* threads to use (torch's count) */
    int64_t parallel_min;    /* elements below which one thread runs a sweep */
    int64_t sr;              /* round bfloat16 stores stochastically */
    const int64_t *seed;     /* [n] the seed of each parameter's bucket */
    const int64_t *ti;       /* [n] each parameter's index in its bucket */
    const double *facts;     /* [n * 5] rows, cols, ndim, numel, dtype_eps of each parameter */
    int (*sweep_cb)(int64_t k); /* NULL: sweeps and reductions run here; else the runtime's */
    double *lib;             /* [n * NUM_HANDED] scalars library stages hand the host step */
    int (*library_cb)(int64_t k); /* runs library stage k (matrix work: the runtime's) */
} optdsl_args;

typedef void (*optdsl_block_fn)(const optdsl_args *a, int64_t i, int64_t lo, int64_t m,
                                const double *row, double *acc);

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

/* -- columns of one block: the tensor's memory, or a staging buffer -------------------- */
#define OPTDSL_COLUMNS(CT, S)                                                              \
static CT *optdsl_read_##S(const optdsl_args *a, int64_t i, int64_t c, int64_t lo,         \
                           int64_t m, CT *buf) {                                            \
    char *p = (char *)a->ptr[i * a->ncol + c];                                              \
    int d = a->dtype[i * a->ncol + c];                                                      \
    if (d == OPTDSL_##S) return (CT *)p + lo;                                               \
    if (d == OPTDSL_F32) { const float *x = (const float *)p + lo;                         \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)x[j]; }                                \
    else if (d == OPTDSL_F64) { const double *x = (const double *)p + lo;                  \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)x[j]; }                                \
    else if (d == OPTDSL_F16) { const uint16_t *x = (const uint16_t *)p + lo;              \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)optdsl_from_f16(x[j]); }               \
    else { const uint16_t *x = (const uint16_t *)p + lo;                                   \
        for (int64_t j = 0; j < m; j++) buf[j] = (CT)optdsl_from_bf16(x[j]); }              \
    return buf;                                                                             \
}                                                                                           \
static CT *optdsl_dest_##S(const optdsl_args *a, int64_t i, int64_t c, int64_t lo,         \
                           CT *buf) {                                                       \
    char *p = (char *)a->ptr[i * a->ncol + c];                                              \
    return a->dtype[i * a->ncol + c] == OPTDSL_##S ? (CT *)p + lo : buf;                   \
}                                                                                           \
static void optdsl_write_##S(const optdsl_args *a, int64_t i, int64_t c, int64_t stream,   \
                             int64_t lo, int64_t m, const CT *v) {                          \
    char *p = (char *)a->ptr[i * a->ncol + c];                                              \
    int d = a->dtype[i * a->ncol + c];                                                      \
    if (d == OPTDSL_##S && (const CT *)p + lo == v) return;                                 \
    if (d == OPTDSL_F32) { float *x = (float *)p + lo;                                     \
        for (int64_t j = 0; j < m; j++) x[j] = (float)v[j]; }                               \
    else if (d == OPTDSL_F64) { double *x = (double *)p + lo;                              \
        for (int64_t j = 0; j < m; j++) x[j] = (double)v[j]; }                              \
    else if (d == OPTDSL_F16) { uint16_t *x = (uint16_t *)p + lo;                          \
        for (int64_t j = 0; j < m; j++) x[j] = optdsl_to_f16((float)v[j]); }                \
    else if (!a->sr) { uint16_t *x = (uint16_t *)p + lo;                                   \
        for (int64_t j = 0; j < m; j++) x[j] = optdsl_to_bf16((float)v[j]); }               \
    else { uint16_t *x = (uint16_t *)p + lo;                                               \
        uint32_t key = optdsl_stream_key(a->seed[i], a->ti[i], stream);                     \
        uint32_t mixed = optdsl_mix32(key);                                                 \
        for (int64_t j = 0; j < m; j++)                                                     \
            x[j] = optdsl_to_bf16_sr((float)v[j], key, mixed, lo + j); }                    \
}
OPTDSL_COLUMNS(float, F32)
OPTDSL_COLUMNS(double, F64)

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

/* -- a block's raw partial, in float64, in a fixed order (8 lanes, then the lanes) ------ */
#define OPTDSL_PARTIALS(CT, S)                                                             \
static double optdsl_sum_##S(const CT *x, int64_t m) {                                     \
    double lane[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};                              \
    int64_t j = 0;                                                                          \
    for (; j + 8 <= m; j += 8)                                                              \
        for (int l = 0; l < 8; l++) lane[l] += (double)x[j + l];                            \
    for (int l = 0; j < m; j++, l++) lane[l] += (double)x[j];                               \
    return ((lane[0] + lane[1]) + (lane[2] + lane[3]))                                      \
         + ((lane[4] + lane[5]) + (lane[6] + lane[7]));                                     \
}                                                                                           \
static double optdsl_max_##S(const CT *x, int64_t m, double acc) {                         \
    for (int64_t j = 0; j < m; j++) acc = optdsl_max_d(acc, (double)x[j]);                  \
    return acc;                                                                             \
}
OPTDSL_PARTIALS(float, F32)
OPTDSL_PARTIALS(double, F64)

/* -- running a sweep over every block -------------------------------------------------- */
static int64_t optdsl_elements(const optdsl_args *a) {
    int64_t total = 0;
    for (int64_t i = 0; i < a->n; i++) total += a->numel[i];
    return total;
}

/* Runs a sweep's block functions over the block map (in parallel when it is big enough),
   each block's partials into a->partials; then each parameter's raw partials, combined
   over its blocks in order from the identities, into a->raw. Results do not depend on the
   number of threads. */
static void optdsl_run_blocks(const optdsl_args *a, optdsl_block_fn f32, optdsl_block_fn f64,
                              int64_t row_width, int64_t nred, const int *max_combine,
                              const double *identity) {
    int64_t threads = a->threads > 0 ? a->threads : 1;
    if (optdsl_elements(a) < a->parallel_min) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads((int)threads) if (threads > 1)
#endif
    for (int64_t b = 0; b < a->nblocks; b++) {
        int64_t i = a->blocks[2 * b], lo = a->blocks[2 * b + 1];
        int64_t m = a->numel[i] - lo < OPTDSL_BLOCK ? a->numel[i] - lo : OPTDSL_BLOCK;
        double *acc = a->partials + b * (nred > 0 ? nred : 1);
        for (int64_t r = 0; r < nred; r++) acc[r] = identity[r];
        optdsl_block_fn f = a->dtype[i * a->ncol] == OPTDSL_F64 ? f64 : f32;
        f(a, i, lo, m, a->rows + i * row_width, acc);
    }
    if (nred == 0) return;
    for (int64_t i = 0; i < a->n; i++)
        for (int64_t r = 0; r < nred; r++) a->raw[i * nred + r] = identity[r];
    for (int64_t b = 0; b < a->nblocks; b++) {
        int64_t i = a->blocks[2 * b];
        for (int64_t r = 0; r < nred; r++) {
            double *raw = a->raw + i * nred + r, part = a->partials[b * nred + r];
            *raw = max_combine[r] ? optdsl_max_d(*raw, part) : *raw + part;
        }
    }
}

/* The scalar state j of parameter i, as the host step reads it (float64). */
static inline double optdsl_scalar_state(const optdsl_args *a, int64_t i, int64_t j,
                                         int64_t count) {
    const void *p = a->sptr[i * count + j];
    return a->sdtype[i * count + j] == OPTDSL_F64 ? *(const double *)p
                                                    : (double)*(const float *)p;
}

/* Commits the scalar states' new values (float64 to the tensor's dtype, to nearest). */
static void optdsl_commit_scalar_states(const optdsl_args *a, int64_t count) {
    for (int64_t i = 0; i < a->n; i++)
        for (int64_t j = 0; j < count; j++) {
            void *p = a->sptr[i * count + j];
            double v = a->sval[i * count + j];
            if (a->sdtype[i * count + j] == OPTDSL_F64) *(double *)p = v;
            else *(float *)p = (float)v;
        }
}
"""


def prelude() -> str:
    """The prelude's text with this version's constants."""
    return PRELUDE.replace("@ABI@", str(ABI_VERSION)).replace("@BLOCK@", str(BLOCK))
