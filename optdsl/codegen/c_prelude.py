"""The fixed part of every generated C step: the ABI struct the runtime fills
(optdsl.runtime.c_abi mirrors it field for field), the header it shares with the routines
compiled once and linked in (optdsl.codegen.c_routines: block size, dtype codes, element
helpers with NumPy's meaning, the routines' declarations), the columns of a block (the
tensor's own memory when it is stored in the compute dtype, else a staging buffer the
routines' storage conversions fill and write back), the finishing of row and column
statistics, the block map run in parallel, and the host step's small helpers. Partials and
statistics are combined in a fixed order, so they do not depend on the number of threads.
"""

from __future__ import annotations

from optdsl.codegen.c_routines import BLOCK, DTYPE_CODES, header

__all__ = ["ABI_VERSION", "BLOCK", "DTYPE_CODES", "MAX_COLUMNS", "prelude"]

ABI_VERSION = 5
MAX_COLUMNS = 64  # pointer-table columns a step may have (TENSORS and the copy)

PRELUDE = r"""#include <fenv.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define OPTDSL_ABI @ABI@
@HEADER@
/* What the runtime hands a step (optdsl.runtime.c_abi.Args mirrors it). */
typedef struct optdsl_args {
    int64_t n;               /* parameters of the group */
    int64_t ncol;            /* pointer-table columns: TENSORS, then the master's copy */
    void *const *ptr;        /* [n * ncol] data pointers (NULL: column not used) */
    const int8_t *dtype;     /* [n * ncol] storage dtype codes */
    const int64_t *numel;    /* [n] elements of each parameter */
    double *t;               /* [n] the step number of each parameter's update */
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
    void *const *stat;       /* [n * NUM_STATS] each fused row/column statistic's tensor, in
                                the compute dtype (NULL: the library stage computes it) */
    double *const *statpart; /* [n * NUM_STATS] its float64 partials */
    const int64_t *stat_group; /* [n] blocks of each parameter's column groups */
    int64_t nunits;          /* entries of the unit map (0: none) */
    const int64_t *units;    /* [nunits * 2] (first block, blocks): runs of blocks of one
                                parameter that one thread runs in order */
    void *const *steps;      /* [n] each parameter's step count (a float32/float64 number) */
    const int8_t *step_dtype; /* [n] its dtype code */
    int64_t count_steps;     /* count each update here (steps[i] += 1, which is t[i]) first;
                                0: the runtime counted them and wrote t */
} optdsl_args;

typedef void (*optdsl_block_fn)(const optdsl_args *a, int64_t i, int64_t lo, int64_t m,
                                const double *row, double *acc);

/* -- columns of one block: the tensor's memory, or a staging buffer -------------------- */
#define OPTDSL_COLUMNS(CT, S)                                                              \
static inline CT *optdsl_read_##S(const optdsl_args *a, int64_t i, int64_t c, int64_t lo,  \
                                  int64_t m, CT *buf) {                                     \
    char *p = (char *)a->ptr[i * a->ncol + c];                                              \
    int d = a->dtype[i * a->ncol + c];                                                      \
    if (d == OPTDSL_##S) return (CT *)p + lo;                                               \
    optdsl_load_##S(p, d, lo, m, buf);                                                      \
    return buf;                                                                             \
}                                                                                           \
static CT *optdsl_dest_##S(const optdsl_args *a, int64_t i, int64_t c, int64_t lo,         \
                           CT *buf) {                                                       \
    char *p = (char *)a->ptr[i * a->ncol + c];                                              \
    return a->dtype[i * a->ncol + c] == OPTDSL_##S ? (CT *)p + lo : buf;                   \
}                                                                                           \
static inline void optdsl_write_##S(const optdsl_args *a, int64_t i, int64_t c,            \
                                    int64_t stream, int64_t lo, int64_t m, const CT *v) {   \
    char *p = (char *)a->ptr[i * a->ncol + c];                                              \
    int d = a->dtype[i * a->ncol + c];                                                      \
    if (d == OPTDSL_##S && (const CT *)p + lo == v) return;                                 \
    int sr = d == OPTDSL_BF16 && a->sr;                                                     \
    optdsl_store_##S(p, d, lo, m, v, sr, sr ? a->seed[i] : 0, sr ? a->ti[i] : 0, stream);   \
}
OPTDSL_COLUMNS(float, F32)
OPTDSL_COLUMNS(double, F64)

/* A parameter's matrix view (its facts): its rows and its columns. */
static inline int64_t optdsl_rows_of(const optdsl_args *a, int64_t i) {
    return (int64_t)a->facts[i * 5];
}
static inline int64_t optdsl_cols_of(const optdsl_args *a, int64_t i) {
    return (int64_t)a->facts[i * 5 + 1];
}

/* The tensor of parameter i's statistic slot, or NULL (the library stage computes it; no
   table at all: a runner that fuses none). */
static inline void *optdsl_stat(const optdsl_args *a, int64_t i, int64_t slot,
                                int64_t nstats) {
    return a->stat == NULL ? NULL : a->stat[i * nstats + slot];
}

/* Column group partials of the block at lo of parameter i, statistic slot. */
static inline double *optdsl_col_part(const optdsl_args *a, int64_t i, int64_t slot,
                                      int64_t nstats, int64_t lo) {
    int64_t nstat = a->numel[i] / optdsl_rows_of(a, i);
    return a->statpart[i * nstats + slot] + (lo / OPTDSL_BLOCK / a->stat_group[i]) * nstat;
}

/* A statistic's float64 total over n elements finished (0: the sum, 1: the mean, 2: the
   square root) and stored in the compute dtype at out[k]. */
static inline void optdsl_put_stat(const optdsl_args *a, int64_t i, void *out, int64_t k,
                                   double x, int64_t n, int finish) {
    if (finish == 1) x = x / (double)n;
    else if (finish == 2) x = sqrt(x);
    if (a->dtype[i * a->ncol] == OPTDSL_F64) ((double *)out)[k] = x;
    else ((float *)out)[k] = (float)x;
}

/* Row statistic slot of each parameter it is fused for: its pieces in block order. */
static void optdsl_finish_rows(const optdsl_args *a, int64_t slot, int64_t nstats,
                               int finish) {
    for (int64_t i = 0; i < a->n; i++) {
        void *out = optdsl_stat(a, i, slot, nstats);
        if (out == NULL) continue;
        const double *seg = a->statpart[i * nstats + slot];
        int64_t cols = optdsl_cols_of(a, i), nrows = a->numel[i] / cols;
        for (int64_t r = 0; r < nrows; r++) {
            int64_t k0 = r * cols / OPTDSL_BLOCK, k1 = ((r + 1) * cols - 1) / OPTDSL_BLOCK;
            double x = 0.0;
            for (int64_t k = k0; k <= k1; k++) x += seg[r + k];
            optdsl_put_stat(a, i, out, r, x, cols, finish);
        }
    }
}

/* Zeroes column statistic slot's group partials, before the sweep. */
static void optdsl_start_cols(const optdsl_args *a, int64_t slot, int64_t nstats) {
    for (int64_t i = 0; i < a->n; i++) {
        if (optdsl_stat(a, i, slot, nstats) == NULL) continue;
        int64_t blocks = (a->numel[i] + OPTDSL_BLOCK - 1) / OPTDSL_BLOCK;
        int64_t groups = (blocks + a->stat_group[i] - 1) / a->stat_group[i];
        int64_t nstat = a->numel[i] / optdsl_rows_of(a, i);
        memset(a->statpart[i * nstats + slot], 0, (size_t)(groups * nstat) * sizeof(double));
    }
}

/* Column statistic slot of each parameter it is fused for: its groups added in order. */
static void optdsl_finish_cols(const optdsl_args *a, int64_t slot, int64_t nstats,
                               int finish) {
    for (int64_t i = 0; i < a->n; i++) {
        void *out = optdsl_stat(a, i, slot, nstats);
        if (out == NULL) continue;
        double *part = a->statpart[i * nstats + slot];
        int64_t rows = optdsl_rows_of(a, i), nstat = a->numel[i] / rows;
        int64_t blocks = (a->numel[i] + OPTDSL_BLOCK - 1) / OPTDSL_BLOCK;
        int64_t groups = (blocks + a->stat_group[i] - 1) / a->stat_group[i];
        for (int64_t g = 1; g < groups; g++)
            for (int64_t s = 0; s < nstat; s++) part[s] += part[g * nstat + s];
        for (int64_t s = 0; s < nstat; s++) optdsl_put_stat(a, i, out, s, part[s], rows, finish);
    }
}

/* -- running a sweep over every block -------------------------------------------------- */
static int64_t optdsl_elements(const optdsl_args *a) {
    int64_t total = 0;
    for (int64_t i = 0; i < a->n; i++) total += a->numel[i];
    return total;
}

/* Runs a sweep's block functions over the block map (in parallel when it is big enough),
   each block's partials into a->partials; then each parameter's raw partials, combined
   over its blocks in order from the identities, into a->raw. ``grouped``: one thread runs
   each unit of the unit map (runs of blocks, in order), as column statistics need. Results
   do not depend on the number of threads. */
static void optdsl_run_blocks(const optdsl_args *a, optdsl_block_fn f32, optdsl_block_fn f64,
                              int64_t row_width, int64_t nred, const int *max_combine,
                              const double *identity, int grouped) {
    int64_t threads = a->threads > 0 ? a->threads : 1;
    if (optdsl_elements(a) < a->parallel_min) threads = 1;
    const int units = grouped && a->nunits > 0;
    const int64_t count = units ? a->nunits : a->nblocks;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads((int)threads) if (threads > 1)
#endif
    for (int64_t u = 0; u < count; u++) {
        int64_t first = units ? a->units[2 * u] : u;
        int64_t last = first + (units ? a->units[2 * u + 1] : 1);
        for (int64_t b = first; b < last; b++) {
            int64_t i = a->blocks[2 * b], lo = a->blocks[2 * b + 1];
            int64_t m = a->numel[i] - lo < OPTDSL_BLOCK ? a->numel[i] - lo : OPTDSL_BLOCK;
            double *acc = a->partials + b * (nred > 0 ? nred : 1);
            for (int64_t r = 0; r < nred; r++) acc[r] = identity[r];
            optdsl_block_fn f = a->dtype[i * a->ncol] == OPTDSL_F64 ? f64 : f32;
            f(a, i, lo, m, a->rows + i * row_width, acc);
        }
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

/* Asks the caches for the first lines of each object at `addresses` (the host objects
   a steady step's checks read: optdsl.optim.host_prefetch), so that their
   misses overlap instead of coming one Python read at a time. A prefetch is a hint: it
   reads nothing and never faults, whatever the address. */
void optdsl_prefetch(const int64_t *addresses, int64_t n, int64_t lines) {
    for (int64_t i = 0; i < n; i++) {
        const char *p = (const char *)(intptr_t)addresses[i];
        for (int64_t l = 0; l < lines; l++) __builtin_prefetch(p + 64 * l, 0, 3);
    }
}

/* Counts each parameter's update in its step count and takes the new count as its t (as
   the runtime's `step += 1` in the count's dtype: the sum of a float and 1 rounded once). */
static void optdsl_count_steps(optdsl_args *a) {
    for (int64_t i = 0; i < a->n; i++) {
        if (a->step_dtype[i] == OPTDSL_F64) {
            double *s = (double *)a->steps[i];
            *s = *s + 1.0;
            a->t[i] = *s;
        } else {
            float *s = (float *)a->steps[i];
            *s = *s + 1.0f;
            a->t[i] = (double)*s;
        }
    }
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
    return PRELUDE.replace("@ABI@", str(ABI_VERSION)).replace("@HEADER@", header())
