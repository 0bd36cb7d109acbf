/* Bit-packed kernels for Si-BNN inference (METHOD.md §2): {0,1} activations and ±1 weights packed 64 per uint64,
 * a·w = 2·popcount(a AND u) − popcount(a).  Plain C with OpenMP; an AVX-512 VPOPCNTQ path when the compiler
 * targets it (-march=native on a machine that has it), scalar popcount otherwise.  Called through ctypes
 * with pointers to torch tensors owned by the caller (sibnn/infer/kernels.py); nothing here allocates.
 *
 * Layouts (little-endian bit order: bit j of word w is channel 64·w + j):
 *   packed activations  (rows, Lw) uint64, a row is one pixel's channels (NHWC) or one sample's features;
 *   blocked weights     (Co_pad/16, L, 16), L = K·K·Cw in (ky, kx, c) order: 16 output channels side by side so
 *                       one pair of zmm registers serves them.
 * The convolutions' scratch (zero-bordered input copy, row offsets and popcounts) is passed in by the caller.
 * All results are exact integers (as float32).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define SIBNN_AVX512 1
#else
#define SIBNN_AVX512 0
#endif

int sibnn_has_avx512(void) { return SIBNN_AVX512; }

/* out[r, w] bit j = [ sign[l]·x[r, l] >= T[l] ], l = 64·w + j < L; bits past L are 0. sign is ±1 (exact). */
void sibnn_threshold_pack(const float *x, int64_t rows, int64_t L, const float *sign, const float *T,
                          uint64_t *out, int nthreads) {
    const int64_t Lw = (L + 63) / 64;
    if (rows * L < (1 << 16)) nthreads = 1;  /* a parallel region costs more than this much work */
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * L;
        uint64_t *o = out + r * Lw;
        int64_t w = 0;
#if SIBNN_AVX512
        for (; w < L / 64; w++) {
            uint64_t word = 0;
            for (int k = 0; k < 4; k++) {
                int64_t l = 64 * w + 16 * k;
                __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xr + l), _mm512_loadu_ps(sign + l));
                __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_loadu_ps(T + l), _CMP_GE_OQ);
                word |= (uint64_t)m << (16 * k);
            }
            o[w] = word;
        }
#endif
        for (; w < Lw; w++) {
            uint64_t word = 0;
            int64_t end = L - 64 * w < 64 ? L - 64 * w : 64;
            for (int64_t j = 0; j < end; j++) {
                int64_t l = 64 * w + j;
                word |= (uint64_t)(xr[l] * sign[l] >= T[l]) << j;
            }
            o[w] = word;
        }
    }
}

/* ---- binary convolution / linear (direct, no im2col buffer) ---------------------------------------------------
 *
 * sibnn_bconv computes, for every output pixel (row) r = (n·Ho + oy)·Wo + ox and output channel co < Co_pad,
 *   m[r, co] = 2·Σ_l popcount(a_r[l] & B[co, l]) − Σ_l popcount(a_r[l]),  l = (ky·K + kx)·Cw + c,
 * a_r[l] = in[n, oy·s − pad + ky, ox·s − pad + kx, c] (zero outside the image), B blocked as (Co_pad/16, L, 16).
 * A linear layer is the case H = W = K = 1 (Cw = the feature words, rows = the batch).
 * The taps are read straight from the (zero-bordered) input: when pad > 0 the input is first copied into
 * work = (N, H + 2·pad, W + 2·pad, Cw) words with a zero border; then each row's tap origin (int64 word offset)
 * and its popcount q[r] (int32), so work holds (pad > 0 ? N·(H + 2·pad)·(W + 2·pad)·Cw : 0) + rows + ceil(rows/2)
 * words.
 * out is (rows, Co_pad) float32; with scale: out = m·scale[co] + shift[co] (one FMA), then + res[r, co] if res.
 * With bits (the next layer's threshold fused into the epilogue; tsign, tT (Co_pad,) float32): bit co of row r of
 * bits = (rows, ceil(Co_pad/64)) words is [tsign[co]·out[r, co] >= tT[co]], computed from the very float stored to
 * out, as sibnn_threshold_pack would read it.  A work item (32 channels, or 16 at the end) stores its own
 * uint32/uint16 piece of the word (little-endian: 16-channel block b is bits 16·(b % 4) .. of word b / 4), so
 * threads that share a word never write the same bytes; pieces past Co_pad are not written (the caller zeroes them
 * when Co_pad % 64 != 0). */

typedef struct {
    const uint64_t *base;  /* tap origin of pixel (0, 0) of image 0 in the (padded) input */
    int64_t Hp, Wp, Ho, Wo, Cw, K, stride, T, L, Co_pad;
    const int64_t *toff;   /* word offset of tap t = ky·K + kx from a row's origin */
    const int64_t *roff;   /* word offset of row r's origin from base */
    const uint64_t *B;
    const int32_t *q;
    float *out;
    const float *scale, *shift, *res;
    const float *tsign, *tT;
    uint16_t *bits;        /* (rows, 4·ceil(Co_pad/64)) uint16 pieces, or 0 */
    int64_t bits_row;      /* uint16 pieces per row of bits */
} bconv_args;

/* One 16-channel block's bits of one row (portable path): a 16-bit store of its own (see above). */
static inline void store_bits16(const bconv_args *g, int64_t row, int64_t block, uint16_t m) {
    memcpy(g->bits + row * g->bits_row + block, &m, sizeof m);
}

static inline const uint64_t *row_origin(const bconv_args *g, int64_t row) { return g->base + g->roff[row]; }

#define SIBNN_MR 6  /* rows per register tile */

#if SIBNN_AVX512
/* One register tile: MR rows × NZ zmm (8 output channels each, NZ/2 blocks of 16), accumulators in qword lanes. */
static inline __attribute__((always_inline)) void bconv_tile(const bconv_args *g, const int MR, const int NZ,
                                                             int64_t r0, int64_t cb) {
    const uint64_t *ap[SIBNN_MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) ap[r] = row_origin(g, r0 + r);
    const int64_t Cw = g->Cw, L = g->L;
    const uint64_t *b = g->B + cb * L * 16;
    __m512i acc[SIBNN_MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) acc[r][z] = _mm512_setzero_si512();
    for (int64_t t = 0; t < g->T; t++) {
        const int64_t off = g->toff[t];
        const uint64_t *bt = b + t * Cw * 16;
        for (int64_t c = 0; c < Cw; c++) {
            __m512i bz[4];
#pragma GCC unroll 4
            for (int z = 0; z < NZ; z++)
                bz[z] = _mm512_loadu_si512((const void *)(bt + (z >> 1) * L * 16 + c * 16 + (z & 1) * 8));
#pragma GCC unroll 8
            for (int r = 0; r < MR; r++) {
                __m512i av = _mm512_set1_epi64((long long)ap[r][off + c]);
#pragma GCC unroll 4
                for (int z = 0; z < NZ; z++)
                    acc[r][z] = _mm512_add_epi64(acc[r][z], _mm512_popcnt_epi64(_mm512_and_si512(av, bz[z])));
            }
        }
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    /* the arguments in locals: the stores to out could alias *g as far as the compiler knows */
    const float *scale = g->scale, *shift = g->shift, *res = g->res, *tsign = g->tsign, *tT = g->tT;
    float *out = g->out;
    uint16_t *bits = g->bits;
    const int64_t Co_pad = g->Co_pad, bits_row = g->bits_row;
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        const __m512i qv = _mm512_set1_epi32(g->q[r0 + r]);
        uint32_t word = 0;
#pragma GCC unroll 2
        for (int j = 0; j < NZ / 2; j++) {
            const int64_t c0 = (cb + j) * 16;
            __m512i p = _mm512_permutex2var_epi32(acc[r][2 * j], even, acc[r][2 * j + 1]);
            __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(p, p), qv));
            if (scale) v = _mm512_fmadd_ps(v, _mm512_loadu_ps(scale + c0), _mm512_loadu_ps(shift + c0));
            if (res) v = _mm512_add_ps(v, _mm512_loadu_ps(res + (r0 + r) * Co_pad + c0));
            _mm512_storeu_ps(out + (r0 + r) * Co_pad + c0, v);
            if (bits)
                word |= (uint32_t)_mm512_cmp_ps_mask(_mm512_mul_ps(v, _mm512_loadu_ps(tsign + c0)),
                                                     _mm512_loadu_ps(tT + c0), _CMP_GE_OQ) << (16 * j);
        }
        if (bits) {  /* this tile's 16·NZ/2 channels: one 16- or 32-bit store (cb is even when NZ = 4) */
            if (NZ == 4) {
                memcpy(bits + (r0 + r) * bits_row + cb, &word, sizeof word);
            } else {
                uint16_t half = (uint16_t)word;
                memcpy(bits + (r0 + r) * bits_row + cb, &half, sizeof half);
            }
        }
    }
}

#define SIBNN_TILE_FN(mr, nz) \
    static void bconv_tile_##mr##_##nz(const bconv_args *g, int64_t r0, int64_t cb) { bconv_tile(g, mr, nz, r0, cb); }
SIBNN_TILE_FN(1, 2) SIBNN_TILE_FN(2, 2) SIBNN_TILE_FN(3, 2) SIBNN_TILE_FN(4, 2) SIBNN_TILE_FN(5, 2) SIBNN_TILE_FN(6, 2)
SIBNN_TILE_FN(1, 4) SIBNN_TILE_FN(2, 4) SIBNN_TILE_FN(3, 4) SIBNN_TILE_FN(4, 4) SIBNN_TILE_FN(5, 4) SIBNN_TILE_FN(6, 4)
typedef void (*bconv_tile_fn)(const bconv_args *, int64_t, int64_t);
static const bconv_tile_fn bconv_tiles[2][SIBNN_MR + 1] = {
    {0, bconv_tile_1_2, bconv_tile_2_2, bconv_tile_3_2, bconv_tile_4_2, bconv_tile_5_2, bconv_tile_6_2},
    {0, bconv_tile_1_4, bconv_tile_2_4, bconv_tile_3_4, bconv_tile_4_4, bconv_tile_5_4, bconv_tile_6_4}};
#endif

/* Rows r0 .. r0 + mr − 1 (mr ≤ SIBNN_MR) × the 16·nb output channels from block cb (nb = 1 or 2). */
static void bconv_block(const bconv_args *g, int64_t r0, int mr, int64_t cb, int nb) {
#if SIBNN_AVX512
    bconv_tiles[nb - 1][mr](g, r0, cb);
#else
    for (int r = 0; r < mr; r++) {
        const uint64_t *a = row_origin(g, r0 + r);
        uint16_t m = 0;
        for (int64_t j = cb * 16; j < (cb + nb) * 16; j++) {
            const uint64_t *b = g->B + (j / 16) * g->L * 16 + (j % 16);
            int32_t s = 0;
            for (int64_t t = 0; t < g->T; t++)
                for (int64_t c = 0; c < g->Cw; c++)
                    s += __builtin_popcountll(a[g->toff[t] + c] & b[(t * g->Cw + c) * 16]);
            float v = (float)(2 * s - g->q[r0 + r]);
            if (g->scale) v = fmaf(v, g->scale[j], g->shift[j]);
            if (g->res) v += g->res[(r0 + r) * g->Co_pad + j];
            g->out[(r0 + r) * g->Co_pad + j] = v;
            if (g->bits) {
                m |= (uint16_t)((v * g->tsign[j] >= g->tT[j]) << (j % 16));
                if (j % 16 == 15) {
                    store_bits16(g, r0 + r, j / 16, m);
                    m = 0;
                }
            }
        }
    }
#endif
}

void sibnn_bconv(const uint64_t *in, int64_t N, int64_t H, int64_t W, int64_t Cw, int64_t K, int64_t stride,
                 int64_t pad, int64_t Ho, int64_t Wo, const uint64_t *B, int64_t Co_pad, float *out,
                 const float *scale, const float *shift, const float *res, const float *tsign, const float *tT,
                 uint64_t *bits_out, uint64_t *work, int nthreads) {
    const int64_t rows = N * Ho * Wo, T = K * K, L = T * Cw, ncb = Co_pad / 16;
    const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad;
    uint64_t *padded = pad > 0 ? work : 0;
    int64_t *roff = (int64_t *)work + (pad > 0 ? N * Hp * Wp * Cw : 0);
    int32_t *q = (int32_t *)(roff + rows);
    int64_t toff[T];
    for (int64_t ky = 0; ky < K; ky++)
        for (int64_t kx = 0; kx < K; kx++) toff[ky * K + kx] = (ky * Wp + kx) * Cw;
    bconv_args g = {pad > 0 ? padded : in, Hp, Wp, Ho, Wo, Cw, K, stride, T, L, Co_pad, toff, roff, B, q, out,
                    scale, shift, res, tsign, tT, (uint16_t *)bits_out, 4 * ((Co_pad + 63) / 64)};
    /* Work items: column tiles of 32 channels (one of 16 at the end when ncb is odd) × row tiles of SIBNN_MR
     * rows, column-major so a thread keeps one weight panel hot in L1 while it sweeps the rows. */
    const int64_t nct = (ncb + 1) / 2, nrt = (rows + SIBNN_MR - 1) / SIBNN_MR;
    if (rows * L * ncb < (1 << 13) || nct * nrt < 2) nthreads = 1;
#pragma omp parallel num_threads(nthreads)
    {
        if (pad > 0) {
#pragma omp for schedule(static) nowait
            for (int64_t y = 0; y < N * Hp; y++) {
                int64_t n = y / Hp, iy = y % Hp - pad;
                uint64_t *dst = padded + y * Wp * Cw;
                if (iy < 0 || iy >= H) {
                    memset(dst, 0, Wp * Cw * sizeof(uint64_t));
                } else {
                    memset(dst, 0, pad * Cw * sizeof(uint64_t));
                    memcpy(dst + pad * Cw, in + (n * H + iy) * W * Cw, W * Cw * sizeof(uint64_t));
                    memset(dst + (pad + W) * Cw, 0, pad * Cw * sizeof(uint64_t));
                }
            }
        }
        /* Row origins and popcounts, from the unpadded input (so this overlaps the copy above). */
#pragma omp for schedule(static)
        for (int64_t y = 0; y < N * Ho; y++) {
            const int64_t n = y / Ho, oy = y % Ho, iy0 = oy * stride - pad;
            const int64_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = H - iy0 < K ? H - iy0 : K;
            for (int64_t ox = 0; ox < Wo; ox++) {
                const int64_t r = y * Wo + ox, ix0 = ox * stride - pad;
                const int64_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = W - ix0 < K ? W - ix0 : K;
                roff[r] = ((n * Hp + oy * stride) * Wp + ox * stride) * Cw;
                int32_t s = 0;
                for (int64_t ky = ky0; ky < ky1; ky++) {
                    const uint64_t *a = in + ((n * H + iy0 + ky) * W + ix0 + kx0) * Cw;
                    for (int64_t j = 0; j < (kx1 - kx0) * Cw; j++) s += __builtin_popcountll(a[j]);
                }
                q[r] = s;
            }
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < nct * nrt; it++) {
            int64_t ct = it / nrt, rt = it % nrt, r0 = rt * SIBNN_MR;
            int mr = rows - r0 < SIBNN_MR ? (int)(rows - r0) : SIBNN_MR;
            bconv_block(&g, r0, mr, 2 * ct, 2 * ct + 1 < ncb ? 2 : 1);
        }
    }
}
