// augment_views' AVX2 path for CT rows (see augment_avx2.h and augment.h). Compiled with
// fp-contract off like augment.cpp: the only multiply-adds are the explicit _mm256_fmadd_ps
// where madd<true> fuses.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#include "cpu/augment_avx2.h"

#if RE_AUGMENT_HAVE_AVX2_ROW
#include <immintrin.h>

namespace radengine::cpu {

// Phases A, B and C of one CT output row with AVX2, 8 pixels per step, for contiguous
// int16 rows (the pair case): the coordinates and weights as coords_row<true>, the
// (x, x + 1) int16 pairs of the top and bottom rows as two 32-bit gathers split into the
// 4 taps, each windowed per channel, blended and masked as the scalar Phase C: the same
// operations in the same order, the multiply-adds fused where madd<true> fuses them.
// Returns how many pixels it did (a multiple of 8); the caller finishes the row.
__attribute__((target("avx2,fma"))) int32_t ct_row_avx2(const int16_t* x16, const float* rowx,
                                       const float* rowy, float bxv, float byv, float halfW,
                                       float halfH, float maxX, float maxY, int32_t xmax,
                                       int32_t H1, int32_t sy, int Cu, const float* lo,
                                       const float* span, float* y, int64_t plane,
                                       int32_t w) {
  const int* base = reinterpret_cast<const int*>(x16);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  const __m256 half = _mm256_set1_ps(-0.5f), absmask = _mm256_castsi256_ps(
      _mm256_set1_epi32(0x7FFFFFFF));
  const __m256 bx = _mm256_set1_ps(bxv), by = _mm256_set1_ps(byv);
  const __m256 hw = _mm256_set1_ps(halfW), hh = _mm256_set1_ps(halfH);
  const __m256 mx = _mm256_set1_ps(maxX), my = _mm256_set1_ps(maxY);
  const __m256i xm = _mm256_set1_epi32(xmax), h1 = _mm256_set1_epi32(H1);
  const __m256i vsy = _mm256_set1_epi32(sy);
  int32_t j = 0;
  for (; j + 8 <= w; j += 8) {
    // Phase A: grid point, outside mask, unnormalise + border clamp, weights, offsets.
    const __m256 gx = _mm256_add_ps(_mm256_loadu_ps(rowx + j), bx);
    const __m256 gy = _mm256_add_ps(_mm256_loadu_ps(rowy + j), by);
    const __m256 out = _mm256_or_ps(_mm256_cmp_ps(_mm256_and_ps(gx, absmask), one, _CMP_GT_OQ),
                                    _mm256_cmp_ps(_mm256_and_ps(gy, absmask), one, _CMP_GT_OQ));
    __m256 ix = _mm256_fmadd_ps(_mm256_add_ps(gx, one), hw, half);
    __m256 iy = _mm256_fmadd_ps(_mm256_add_ps(gy, one), hh, half);
    ix = _mm256_min_ps(_mm256_max_ps(ix, zero), mx);
    iy = _mm256_min_ps(_mm256_max_ps(iy, zero), my);
    const __m256i xi = _mm256_min_epi32(_mm256_cvttps_epi32(ix), xm);
    const __m256i yi = _mm256_cvttps_epi32(iy);
    const __m256 wx = _mm256_sub_ps(ix, _mm256_cvtepi32_ps(xi));
    const __m256 wy = _mm256_sub_ps(iy, _mm256_cvtepi32_ps(yi));
    const __m256 e = _mm256_sub_ps(one, wx), so = _mm256_sub_ps(one, wy);
    const __m256 wnw = _mm256_mul_ps(so, e), wne = _mm256_mul_ps(so, wx);
    const __m256 wsw = _mm256_mul_ps(wy, e), wse = _mm256_mul_ps(wy, wx);
    const __m256i o = _mm256_add_epi32(_mm256_mullo_epi32(yi, vsy), xi);  // x stride 1
    const __m256i od = _mm256_add_epi32(o, _mm256_and_si256(_mm256_cmpgt_epi32(h1, yi), vsy));
    // Phase B: the taps.
    const __m256i top = _mm256_i32gather_epi32(base, o, 2);  // byte offset = 2 * element
    const __m256i bot = _mm256_i32gather_epi32(base, od, 2);
    const __m256 t00 = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(top, 16), 16));
    const __m256 t01 = _mm256_cvtepi32_ps(_mm256_srai_epi32(top, 16));
    const __m256 t10 = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(bot, 16), 16));
    const __m256 t11 = _mm256_cvtepi32_ps(_mm256_srai_epi32(bot, 16));
    // Phase C, per channel.
    for (int c = 0; c < Cu; ++c) {
      __m256 val = zero;
      if (span[c] > 0.f) {
        const __m256 l = _mm256_set1_ps(lo[c]), sp = _mm256_set1_ps(span[c]);
        // clamp01: max(y, 0) then min(y, 1) (no NaN can occur here).
        const auto win = [&](__m256 t) {
          return _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_sub_ps(t, l), sp), zero), one);
        };
        val = _mm256_mul_ps(win(t00), wnw);
        val = _mm256_fmadd_ps(win(t01), wne, val);
        val = _mm256_fmadd_ps(win(t10), wsw, val);
        val = _mm256_fmadd_ps(win(t11), wse, val);
        val = _mm256_andnot_ps(out, val);
      }
      _mm256_storeu_ps(y + c * plane + j, val);
    }
  }
  return j;
}

}  // namespace radengine::cpu

#endif  // RE_AUGMENT_HAVE_AVX2_ROW
