/* Float-side kernels of the packed model (the parts between binary layers), built into the same library as
 * bitkernels.c.  Layouts: float activations NHWC (a pixel's channels contiguous, = channels_last), int8 weights
 * row-major (one row per output feature).  Nothing here allocates.
 */
#include <stdint.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FP_AVX512 1
#else
#define FP_AVX512 0
#endif

/* Max-pooling on NHWC floats with a per-channel direction and an optional per-channel affine after it:
 *   out[n, oy, ox, c] = a[c] · sign[c] · max_{taps inside the image} (sign[c] · x[n, iy, ix, c]) + b[c]
 * x is float32, or bfloat16 when bf16 != 0 (widened exactly).  sign NULL = all +1; a, b NULL = no affine.  Padded taps are ignored (PyTorch pads max-pooling with −inf); with
 * ceil_mode a window may start inside the padding but never holds only padding (the caller computes Ho, Wo
 * as PyTorch does).  sign·max(sign·x) is exact, and a·m + b is one fused multiply-add per element. */
static inline float load1(const void *x, int64_t i, int bf16) {
    if (!bf16) return ((const float *)x)[i];
    union { uint32_t u; float f; } v = {(uint32_t)((const uint16_t *)x)[i] << 16};
    return v.f;
}
#if FP_AVX512
static inline __m512 load16(const void *x, int64_t i, int bf16) {
    if (!bf16) return _mm512_loadu_ps((const float *)x + i);
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
#endif

void sibnn_maxpool_affine(const void *x, int bf16, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t Ho, int64_t Wo,
                          const float *sign, const float *a, const float *b, float *out, int nthreads) {
    if (N * Ho * Wo * C * kh * kw < (1 << 17)) nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t row = 0; row < N * Ho; row++) {
        const int64_t n = row / Ho, oy = row % Ho;
        int64_t y0 = oy * sh - ph, y1 = y0 + kh;
        if (y0 < 0) y0 = 0;
        if (y1 > H) y1 = H;
        for (int64_t ox = 0; ox < Wo; ox++) {
            int64_t x0 = ox * sw - pw, x1 = x0 + kw;
            if (x0 < 0) x0 = 0;
            if (x1 > W) x1 = W;
            float *o = out + ((n * Ho + oy) * Wo + ox) * C;
            int64_t c = 0;
#if FP_AVX512
            for (; c + 16 <= C; c += 16) {
                const __m512 s = sign ? _mm512_loadu_ps(sign + c) : _mm512_set1_ps(1.0f);
                __m512 m = _mm512_set1_ps(-INFINITY);
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = x0; ix < x1; ix++)
                        m = _mm512_max_ps(m, _mm512_mul_ps(s, load16(x, ((n * H + iy) * W + ix) * C + c, bf16)));
                m = _mm512_mul_ps(m, s);
                if (a) m = _mm512_fmadd_ps(m, _mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c));
                _mm512_storeu_ps(o + c, m);
            }
#endif
            for (; c < C; c++) {
                const float s = sign ? sign[c] : 1.0f;
                float m = -INFINITY;
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = x0; ix < x1; ix++) {
                        float v = s * load1(x, ((n * H + iy) * W + ix) * C + c, bf16);
                        m = v > m ? v : m;
                    }
                m *= s;
                o[c] = a ? fmaf(m, a[c], b[c]) : m;
            }
        }
    }
}

/* Linear layer with int8 weights and float activations, for small batches (memory-bound: the weights are read
 * once per call, 4× fewer bytes than float32):  out[r, o] = scale[o] · Σ_k x[r, k] · q[o, k] + bias[o].
 * Activations are not quantised: each int8 weight is converted to float exactly and multiplied in float32. */
void sibnn_linear_i8(const float *x, int64_t rows, int64_t K, const int8_t *q, int64_t O, const float *scale,
                     const float *bias, float *out, int nthreads) {
    if (O * K < (1 << 16)) nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t o = 0; o < O; o++) {
        const int8_t *w = q + o * K;
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * K;
            int64_t k = 0;
            float acc = 0.0f;
#if FP_AVX512
            __m512 v0 = _mm512_setzero_ps(), v1 = _mm512_setzero_ps();
            for (; k + 32 <= K; k += 32) {
                __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + k))));
                __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + k + 16))));
                v0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr + k), v0);
                v1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + k + 16), v1);
            }
            acc = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
#endif
            for (; k < K; k++) acc += xr[k] * (float)w[k];
            out[r * O + o] = acc * scale[o] + (bias ? bias[o] : 0.0f);
        }
    }
}
