/* Bit-packed kernels for Si-BNN inference (METHOD.md §2): {0,1} activations and ±1 weights packed 64 per uint64,
 * a·w = 2·popcount(a AND u) − popcount(a).  Plain C with OpenMP; an AVX-512 VPOPCNTQ path when the compiler
 * targets it (-march=native on a machine that has it), scalar popcount otherwise.  Called through ctypes with
 * pointers to torch tensors owned by the caller (sibnn/infer/kernels.py); nothing here allocates.
 *
 * Layouts (little-endian bit order: bit j of word w is channel 64·w + j):
 *   packed activations  (rows, Lw) uint64, a row is one pixel's channels (NHWC) or one sample's features;
 *   im2col rows         (rows_pad, K·K·Cw), padded taps and padded rows are zero words;
 *   blocked weights     (Co_pad/16, L, 16): 16 output channels side by side so one AVX-512 pair serves them.
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

/* Packed im2col: A[(n·Ho + oy)·Wo + ox, (ky·K + kx)·Cw + c] = in[n, iy, ix, c], zero outside the image. */
void sibnn_im2col(const uint64_t *in, int64_t N, int64_t H, int64_t W, int64_t Cw, int64_t K, int64_t stride,
                  int64_t pad, int64_t Ho, int64_t Wo, uint64_t *A, int nthreads) {
    const int64_t L = K * K * Cw;
    if (N * Ho * Wo * L < (1 << 15)) nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t row = 0; row < N * Ho * Wo; row++) {
        int64_t n = row / (Ho * Wo), oy = (row / Wo) % Ho, ox = row % Wo;
        uint64_t *a = A + row * L;
        for (int64_t ky = 0; ky < K; ky++) {
            int64_t iy = oy * stride - pad + ky;
            for (int64_t kx = 0; kx < K; kx++) {
                int64_t ix = ox * stride - pad + kx;
                uint64_t *dst = a + (ky * K + kx) * Cw;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                    memset(dst, 0, Cw * sizeof(uint64_t));
                else
                    memcpy(dst, in + ((n * H + iy) * W + ix) * Cw, Cw * sizeof(uint64_t));
            }
        }
    }
}

/* Binary GEMM: m[r, co] = 2·Σ_l popcount(A[r,l] & B[co,l]) − Σ_l popcount(A[r,l])  (= a·w, exact integer, as
 * float32 since |a·w| ≤ fan-in < 2^24).  rows_pad % 4 == 0, Co_pad % 16 == 0, out is (rows_pad, Co_pad).
 * Optional fused epilogue (the ResNet unit's α·BN and shortcut add, one pass instead of three):
 * out = m·scale[co] + shift[co] (+ res[r, co] for r < rows; res is (rows, Co_pad)). */
void sibnn_bgemm(const uint64_t *A, int64_t rows_pad, int64_t L, const uint64_t *B, int64_t Co_pad, float *out,
                 const float *scale, const float *shift, const float *res, int64_t rows, int nthreads) {
    const int64_t nrt = rows_pad / 4, ncb = Co_pad / 16;
    if (rows_pad * L * ncb < (1 << 14)) nthreads = 1;
#pragma omp parallel for collapse(2) num_threads(nthreads) schedule(static)
    for (int64_t cb = 0; cb < ncb; cb++) {
        for (int64_t rt = 0; rt < nrt; rt++) {
            const uint64_t *a = A + rt * 4 * L;
            const uint64_t *b = B + cb * L * 16;
            int32_t q[4];
            for (int r = 0; r < 4; r++) {
                int32_t s = 0;
                for (int64_t l = 0; l < L; l++) s += __builtin_popcountll(a[r * L + l]);
                q[r] = s;
            }
#if SIBNN_AVX512
            __m512i acc[4][2];
            for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
            for (int64_t l = 0; l < L; l++) {
                __m512i b0 = _mm512_loadu_si512((const void *)(b + l * 16));
                __m512i b1 = _mm512_loadu_si512((const void *)(b + l * 16 + 8));
                for (int r = 0; r < 4; r++) {
                    __m512i av = _mm512_set1_epi64((long long)a[r * L + l]);
                    acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(_mm512_and_si512(av, b0)));
                    acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(_mm512_and_si512(av, b1)));
                }
            }
            for (int r = 0; r < 4; r++) {
                float *o = out + (rt * 4 + r) * Co_pad + cb * 16;
                __m256i qv = _mm256_set1_epi32(q[r]);
                for (int h = 0; h < 2; h++) {
                    __m256i p = _mm512_cvtepi64_epi32(acc[r][h]);
                    __m256i m = _mm256_sub_epi32(_mm256_add_epi32(p, p), qv);
                    __m256 v = _mm256_cvtepi32_ps(m);
                    int64_t c0 = cb * 16 + 8 * h;
                    if (scale) v = _mm256_fmadd_ps(v, _mm256_loadu_ps(scale + c0), _mm256_loadu_ps(shift + c0));
                    if (res && rt * 4 + r < rows) v = _mm256_add_ps(v, _mm256_loadu_ps(res + (rt * 4 + r) * Co_pad + c0));
                    _mm256_storeu_ps(o + 8 * h, v);
                }
            }
#else
            int32_t acc[4][16];
            memset(acc, 0, sizeof(acc));
            for (int64_t l = 0; l < L; l++)
                for (int r = 0; r < 4; r++) {
                    uint64_t av = a[r * L + l];
                    for (int j = 0; j < 16; j++) acc[r][j] += __builtin_popcountll(av & b[l * 16 + j]);
                }
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 16; j++) {
                    int64_t c = cb * 16 + j;
                    float v = (float)(2 * acc[r][j] - q[r]);
                    if (scale) v = fmaf(v, scale[c], shift[c]);
                    if (res && rt * 4 + r < rows) v += res[(rt * 4 + r) * Co_pad + c];
                    out[(rt * 4 + r) * Co_pad + c] = v;
                }
#endif
        }
    }
}
