// NT-Xent / InfoNCE on the CPU. Math, tiling, memory and determinism: cpu/contrastive_loss.h.
//
// Layers: tile primitives (the logits of one 128 x 128 tile, the elementwise passes over it,
// the gradient products), in a portable template and in AVX-512 intrinsics, collected in a
// table per (dtype, ISA); the drivers (packing, the tile schedules, the online
// log-sum-exp, OpenMP) call the primitives through the table, one call per tile.
#include "cpu/contrastive_loss.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "cpu/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define RE_CL_X86 1
#define RE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#else
#define RE_CL_X86 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define RE_INLINE inline __attribute__((always_inline))
#else
#define RE_INLINE inline
#endif

namespace radengine::cpu {
namespace {

constexpr int kB = kContrastiveBlock;  // tile side (rows and columns)
constexpr float kSpread = 40.f;        // one exp per logit while all references are this close
constexpr int kPad = 16;               // D is padded to a multiple of this in the row copies

template <typename F>
constexpr F kNegInf = -std::numeric_limits<F>::infinity();

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 64-byte aligned, uninitialised storage (std::vector would zero-fill it).
template <typename T>
struct Buffer {
  T* p = nullptr;
  Buffer() = default;
  explicit Buffer(int64_t count) {
    if (count <= 0) return;
    const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) & ~size_t{63};
    p = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (p == nullptr) throw std::bad_alloc();
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p(std::exchange(o.p, nullptr)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p, o.p);
    return *this;
  }
  ~Buffer() { std::free(p); }
};

// Terms far below a row's largest underflow; denormal arithmetic would cost microcode
// assists on x86, so the kernels' threads flush them to zero (restored on exit).
struct FlushDenormals {
#if RE_CL_X86
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// ============================================================== tile primitives (portable)
// S is a kB x kB row-major tile; rows >= mi are never read or written by the elementwise
// passes. Packed operands (see Packed): a ``tr`` block holds kB rows as 4 panels of 32 rows,
// each transposed to (D, 32); a ``pad`` block holds kB rows of Dp values (zero-padded) as
// column chunks of (kB, w_q), w_q = min(32, Dp - 32 q); gradient accumulators G use the
// ``pad`` layout. Every micro-kernel operand is then a contiguous stream.

// exp for the tiles: 0 below -87 (no denormals), else a degree-7 polynomial on
// x - n ln2 scaled by 2^n (<= 2 ulp); branch-free so that the loops vectorise.
RE_INLINE float exp_tile(float x) {
  const bool zero = !(x > -87.f);  // also NaN
  x = zero ? -87.f : x;
  x = x < 88.f ? x : 88.f;
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723212e-6f;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t e = static_cast<int32_t>(n) + 127;  // in [2, 254]
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return zero ? 0.f : p * scale;
}

RE_INLINE double exp_tile(double x) { return x > -700.0 ? std::exp(x) : 0.0; }

template <typename F>
struct Kernels {
  // S = inv_t * ti^T tj: rows < mi, columns < mj (others unspecified).
  void (*logits)(const F* ti, const F* tj, int64_t D, int mi, int mj, F inv_t, F* S);
  // G (kB x Dp) += H[:mi, :mj] @ U (rows < mj of a pad block), rows < mi.
  void (*add_hu)(const F* H, const F* U, int mi, int mj, int64_t Dp, F* G);
  // G (kB x Dp) += H[:mi, :mj]^T @ U (rows < mi of a pad block), rows < mj.
  void (*add_htu)(const F* H, const F* U, int mi, int mj, int64_t Dp, F* G);
  // Row maxima (rows < mi) and column maxima (over rows < mi, all kB columns); the maximum.
  F (*max_rows_cols)(const F* S, int mi, F* rowmax, F* colmax);
  // Row maxima only.
  void (*max_rows)(const F* S, int mi, F* rowmax);
  // The maximum over rows < mi.
  F (*tile_max)(const F* S, int mi);
  // E = exp(S - K): rowsum = E 1, colsum = E^T 1 (over rows < mi).
  void (*sum_exp_shared)(const F* S, int mi, F K, F* rowsum, F* colsum);
  // rowsum_a = sum_c exp(S_ac - rs_a), colsum_c = sum_a exp(S_ac - cs_c).
  void (*sum_exp_split)(const F* S, int mi, const F* rs, const F* cs, F* rowsum, F* colsum);
  // rowsum_a = sum_c exp(S_ac - rs_a).
  void (*sum_exp_rows)(const F* S, int mi, const F* rs, F* rowsum);
  // S <- exp(S - K) (ra_a + rc_c).
  void (*h_shared)(F* S, int mi, F K, const F* ra, const F* rc);
  // S <- exp(S - la_a) + exp(S - lc_c).
  void (*h_split)(F* S, int mi, const F* la, const F* lc);
  // S <- exp(S - la_a).
  void (*h_rows)(F* S, int mi, const F* la);
};

constexpr int kW = 32;  // panel / chunk width

RE_INLINE int chunk_width(int64_t Dp, int64_t q) {
  return static_cast<int>(std::min<int64_t>(kW, Dp - kW * q));
}

template <typename F>
RE_INLINE void logits_g(const F* ti, const F* tj, int64_t D, int mi, int mj, F inv_t, F* S) {
  const int np = static_cast<int>(ceil_div(mj, kW));
  for (int a = 0; a < mi; ++a) {
    F* __restrict__ s = S + a * kB;
    const F* ta = ti + (a / kW) * D * kW + a % kW;
    for (int j = 0; j < np; ++j) {
      F acc[kW] = {};
      const F* __restrict__ t = tj + j * D * kW;
      for (int64_t d = 0; d < D; ++d) {
        const F x = ta[d * kW];
        for (int c = 0; c < kW; ++c) acc[c] += x * t[d * kW + c];
      }
      for (int c = 0; c < kW; ++c) s[j * kW + c] = acc[c] * inv_t;
    }
  }
}

template <typename F>
RE_INLINE void add_hu_g(const F* H, const F* U, int mi, int mj, int64_t Dp, F* G) {
  for (int64_t q = 0; q * kW < Dp; ++q) {
    const int w = chunk_width(Dp, q);
    const F* Uq = U + q * kB * kW;
    for (int a = 0; a < mi; ++a) {
      F* __restrict__ g = G + q * kB * kW + a * w;
      for (int k = 0; k < mj; ++k) {
        const F h = H[a * kB + k];
        const F* __restrict__ u = Uq + k * w;
        for (int n = 0; n < w; ++n) g[n] += h * u[n];
      }
    }
  }
}

template <typename F>
RE_INLINE void add_htu_g(const F* H, const F* U, int mi, int mj, int64_t Dp, F* G) {
  for (int64_t q = 0; q * kW < Dp; ++q) {
    const int w = chunk_width(Dp, q);
    const F* Uq = U + q * kB * kW;
    for (int c = 0; c < mj; ++c) {
      F* __restrict__ g = G + q * kB * kW + c * w;
      for (int k = 0; k < mi; ++k) {
        const F h = H[k * kB + c];
        const F* __restrict__ u = Uq + k * w;
        for (int n = 0; n < w; ++n) g[n] += h * u[n];
      }
    }
  }
}

template <typename F>
RE_INLINE F max_rows_cols_g(const F* S, int mi, F* rowmax, F* colmax) {
  for (int c = 0; c < kB; ++c) colmax[c] = kNegInf<F>;
  for (int a = 0; a < mi; ++a) {
    const F* __restrict__ s = S + a * kB;
    F m = kNegInf<F>;
    for (int c = 0; c < kB; ++c) {
      m = s[c] > m ? s[c] : m;
      colmax[c] = s[c] > colmax[c] ? s[c] : colmax[c];
    }
    rowmax[a] = m;
  }
  F m = kNegInf<F>;
  for (int c = 0; c < kB; ++c) m = colmax[c] > m ? colmax[c] : m;
  return m;
}

template <typename F>
RE_INLINE void max_rows_g(const F* S, int mi, F* rowmax) {
  for (int a = 0; a < mi; ++a) {
    const F* __restrict__ s = S + a * kB;
    F m = kNegInf<F>;
    for (int c = 0; c < kB; ++c) m = s[c] > m ? s[c] : m;
    rowmax[a] = m;
  }
}

template <typename F>
RE_INLINE F tile_max_g(const F* S, int mi) {
  F m = kNegInf<F>;
  for (int a = 0; a < mi; ++a) {
    for (int c = 0; c < kB; ++c) m = S[a * kB + c] > m ? S[a * kB + c] : m;
  }
  return m;
}

template <typename F>
RE_INLINE void sum_exp_shared_g(const F* S, int mi, F K, F* rowsum, F* colsum) {
  for (int c = 0; c < kB; ++c) colsum[c] = 0;
  for (int a = 0; a < mi; ++a) {
    const F* __restrict__ s = S + a * kB;
    F acc = 0;
    for (int c = 0; c < kB; ++c) {
      const F e = exp_tile(s[c] - K);
      acc += e;
      colsum[c] += e;
    }
    rowsum[a] = acc;
  }
}

template <typename F>
RE_INLINE void sum_exp_split_g(const F* S, int mi, const F* rs, const F* cs, F* rowsum,
                               F* colsum) {
  for (int c = 0; c < kB; ++c) colsum[c] = 0;
  for (int a = 0; a < mi; ++a) {
    const F* __restrict__ s = S + a * kB;
    const F ra = rs[a];
    F acc = 0;
    for (int c = 0; c < kB; ++c) {
      acc += exp_tile(s[c] - ra);
      colsum[c] += exp_tile(s[c] - cs[c]);
    }
    rowsum[a] = acc;
  }
}

template <typename F>
RE_INLINE void sum_exp_rows_g(const F* S, int mi, const F* rs, F* rowsum) {
  for (int a = 0; a < mi; ++a) {
    const F* __restrict__ s = S + a * kB;
    const F ra = rs[a];
    F acc = 0;
    for (int c = 0; c < kB; ++c) acc += exp_tile(s[c] - ra);
    rowsum[a] = acc;
  }
}

template <typename F>
RE_INLINE void h_shared_g(F* S, int mi, F K, const F* ra, const F* rc) {
  for (int a = 0; a < mi; ++a) {
    F* __restrict__ s = S + a * kB;
    const F r = ra[a];
    for (int c = 0; c < kB; ++c) s[c] = exp_tile(s[c] - K) * (r + rc[c]);
  }
}

template <typename F>
RE_INLINE void h_split_g(F* S, int mi, const F* la, const F* lc) {
  for (int a = 0; a < mi; ++a) {
    F* __restrict__ s = S + a * kB;
    const F l = la[a];
    for (int c = 0; c < kB; ++c) s[c] = exp_tile(s[c] - l) + exp_tile(s[c] - lc[c]);
  }
}

template <typename F>
RE_INLINE void h_rows_g(F* S, int mi, const F* la) {
  for (int a = 0; a < mi; ++a) {
    F* __restrict__ s = S + a * kB;
    const F l = la[a];
    for (int c = 0; c < kB; ++c) s[c] = exp_tile(s[c] - l);
  }
}

// One table of the portable primitives per (dtype, target): each entry is a thin function
// with the target attribute into which the template inlines (GCC vectorises it for that ISA).
#define RE_CL_PORTABLE_TABLE(NAME, TARGET, F)                                                 \
  TARGET void NAME##_logits(const F* ti, const F* tj, int64_t D, int mi, int mj, F t, F* S) { \
    logits_g<F>(ti, tj, D, mi, mj, t, S);                                                    \
  }                                                                                           \
  TARGET void NAME##_add_hu(const F* H, const F* U, int mi, int mj, int64_t Dp, F* G) {      \
    add_hu_g<F>(H, U, mi, mj, Dp, G);                                                        \
  }                                                                                           \
  TARGET void NAME##_add_htu(const F* H, const F* U, int mi, int mj, int64_t Dp, F* G) {     \
    add_htu_g<F>(H, U, mi, mj, Dp, G);                                                       \
  }                                                                                           \
  TARGET F NAME##_max_rows_cols(const F* S, int mi, F* rm, F* cm) {                          \
    return max_rows_cols_g<F>(S, mi, rm, cm);                                                \
  }                                                                                           \
  TARGET void NAME##_max_rows(const F* S, int mi, F* rm) { max_rows_g<F>(S, mi, rm); }       \
  TARGET F NAME##_tile_max(const F* S, int mi) { return tile_max_g<F>(S, mi); }              \
  TARGET void NAME##_sum_exp_shared(const F* S, int mi, F K, F* rsum, F* csum) {             \
    sum_exp_shared_g<F>(S, mi, K, rsum, csum);                                               \
  }                                                                                           \
  TARGET void NAME##_sum_exp_split(const F* S, int mi, const F* rs, const F* cs, F* rsum,    \
                                   F* csum) {                                                \
    sum_exp_split_g<F>(S, mi, rs, cs, rsum, csum);                                           \
  }                                                                                           \
  TARGET void NAME##_sum_exp_rows(const F* S, int mi, const F* rs, F* rsum) {                \
    sum_exp_rows_g<F>(S, mi, rs, rsum);                                                      \
  }                                                                                           \
  TARGET void NAME##_h_shared(F* S, int mi, F K, const F* ra, const F* rc) {                 \
    h_shared_g<F>(S, mi, K, ra, rc);                                                         \
  }                                                                                           \
  TARGET void NAME##_h_split(F* S, int mi, const F* la, const F* lc) {                       \
    h_split_g<F>(S, mi, la, lc);                                                             \
  }                                                                                           \
  TARGET void NAME##_h_rows(F* S, int mi, const F* la) { h_rows_g<F>(S, mi, la); }           \
  const Kernels<F> NAME = {                                                                   \
      NAME##_logits,         NAME##_add_hu,         NAME##_add_htu,  NAME##_max_rows_cols,   \
      NAME##_max_rows,       NAME##_tile_max,       NAME##_sum_exp_shared,                   \
      NAME##_sum_exp_split,  NAME##_sum_exp_rows,   NAME##_h_shared, NAME##_h_split,         \
      NAME##_h_rows};

#define RE_TARGET_NONE
RE_CL_PORTABLE_TABLE(kPortableF, RE_TARGET_NONE, float)
RE_CL_PORTABLE_TABLE(kPortableD, RE_TARGET_NONE, double)
#if RE_CL_X86
RE_CL_PORTABLE_TABLE(kAvx2F, RE_TARGET_AVX2, float)
RE_CL_PORTABLE_TABLE(kAvx2D, RE_TARGET_AVX2, double)
RE_CL_PORTABLE_TABLE(kAvx512D, RE_TARGET_AVX512, double)
#endif

// ============================================================== tile primitives (AVX-512)
#if RE_CL_X86

constexpr int kV = kB / 16;  // zmm vectors per tile row
constexpr int kMR = 8;       // micro-kernel rows (kMR x 32 accumulators: 16 zmm)

RE_TARGET_AVX512 RE_INLINE __m512 exp512(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_GT_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));  // -inf and NaN become -87 (then masked)
  x = _mm512_min_ps(x, _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}

// C (kMR x 16 NV, row stride ldc) = scale * A . B (kAccum: C += A . B), over k < K, with
// A_rk = A[r * kARS + k * kAKS] (broadcast) and B_kn = Bm[k * bks + n] (vector loads).
template <int NV, int kARS, int kAKS, bool kAccum>
RE_TARGET_AVX512 RE_INLINE void micro512(const float* __restrict__ A, const float* __restrict__ Bm,
                                         int64_t bks, int K, float* __restrict__ C, int64_t ldc,
                                         float scale) {
  __m512 acc[kMR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if constexpr (kAccum) {
        acc[r][v] = _mm512_loadu_ps(C + r * ldc + 16 * v);
      } else {
        acc[r][v] = _mm512_setzero_ps();
      }
    }
  }
  for (int k = 0; k < K; ++k) {
    const float* a = A + static_cast<int64_t>(k) * kAKS;
    const float* b = Bm + k * bks;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * kARS]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if constexpr (kAccum) {
        _mm512_storeu_ps(C + r * ldc + 16 * v, acc[r][v]);
      } else {
        _mm512_storeu_ps(C + r * ldc + 16 * v, _mm512_mul_ps(acc[r][v], sc));
      }
    }
  }
}

RE_TARGET_AVX512 void logits512(const float* ti, const float* tj, int64_t D, int mi, int mj,
                                float inv_t, float* S) {
  const int np = static_cast<int>(ceil_div(mi, kMR)), nq = static_cast<int>(ceil_div(mj, kW));
  for (int p = 0; p < np; ++p) {
    const float* a = ti + (p * kMR / kW) * D * kW + (p * kMR) % kW;
    for (int q = 0; q < nq; ++q) {
      micro512<2, 1, kW, false>(a, tj + q * D * kW, kW, static_cast<int>(D),
                                S + p * kMR * kB + q * kW, kB, inv_t);
    }
  }
}

RE_TARGET_AVX512 void add_hu512(const float* H, const float* U, int mi, int mj, int64_t Dp,
                                float* G) {
  const int np = static_cast<int>(ceil_div(mi, kMR));
  for (int64_t q = 0; q * kW < Dp; ++q) {
    const int w = chunk_width(Dp, q);
    const float* u = U + q * kB * kW;
    float* g = G + q * kB * kW;
    for (int p = 0; p < np; ++p) {
      if (w == kW) {
        micro512<2, kB, 1, true>(H + p * kMR * kB, u, w, mj, g + p * kMR * w, w, 1.f);
      } else {
        micro512<1, kB, 1, true>(H + p * kMR * kB, u, w, mj, g + p * kMR * w, w, 1.f);
      }
    }
  }
}

RE_TARGET_AVX512 void add_htu512(const float* H, const float* U, int mi, int mj, int64_t Dp,
                                 float* G) {
  const int np = static_cast<int>(ceil_div(mj, kMR));
  for (int64_t q = 0; q * kW < Dp; ++q) {
    const int w = chunk_width(Dp, q);
    const float* u = U + q * kB * kW;
    float* g = G + q * kB * kW;
    for (int p = 0; p < np; ++p) {
      if (w == kW) {
        micro512<2, 1, kB, true>(H + p * kMR, u, w, mi, g + p * kMR * w, w, 1.f);
      } else {
        micro512<1, 1, kB, true>(H + p * kMR, u, w, mi, g + p * kMR * w, w, 1.f);
      }
    }
  }
}

RE_TARGET_AVX512 float max_rows_cols512(const float* S, int mi, float* rowmax, float* colmax) {
  __m512 cm[kV];
  for (int v = 0; v < kV; ++v) cm[v] = _mm512_set1_ps(kNegInf<float>);
  for (int a = 0; a < mi; ++a) {
    const float* s = S + a * kB;
    __m512 rm = _mm512_set1_ps(kNegInf<float>);
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      const __m512 x = _mm512_loadu_ps(s + 16 * v);
      rm = _mm512_max_ps(rm, x);
      cm[v] = _mm512_max_ps(cm[v], x);
    }
    rowmax[a] = _mm512_reduce_max_ps(rm);
  }
  __m512 all = cm[0];
  for (int v = 0; v < kV; ++v) {
    _mm512_storeu_ps(colmax + 16 * v, cm[v]);
    all = _mm512_max_ps(all, cm[v]);
  }
  return _mm512_reduce_max_ps(all);
}

RE_TARGET_AVX512 void max_rows512(const float* S, int mi, float* rowmax) {
  for (int a = 0; a < mi; ++a) {
    const float* s = S + a * kB;
    __m512 rm = _mm512_loadu_ps(s);
#pragma GCC unroll 8
    for (int v = 1; v < kV; ++v) rm = _mm512_max_ps(rm, _mm512_loadu_ps(s + 16 * v));
    rowmax[a] = _mm512_reduce_max_ps(rm);
  }
}

RE_TARGET_AVX512 float tile_max512(const float* S, int mi) {
  __m512 m0 = _mm512_set1_ps(kNegInf<float>), m1 = m0;
  for (int a = 0; a < mi; ++a) {
    const float* s = S + a * kB;
#pragma GCC unroll 8
    for (int v = 0; v < kV; v += 2) {
      m0 = _mm512_max_ps(m0, _mm512_loadu_ps(s + 16 * v));
      m1 = _mm512_max_ps(m1, _mm512_loadu_ps(s + 16 * v + 16));
    }
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

RE_TARGET_AVX512 void sum_exp_shared512(const float* S, int mi, float K, float* rowsum,
                                        float* colsum) {
  const __m512 kk = _mm512_set1_ps(K);
  __m512 cs[kV];
  for (int v = 0; v < kV; ++v) cs[v] = _mm512_setzero_ps();
  for (int a = 0; a < mi; ++a) {
    const float* s = S + a * kB;
    __m512 rs = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * v), kk));
      rs = _mm512_add_ps(rs, e);
      cs[v] = _mm512_add_ps(cs[v], e);
    }
    rowsum[a] = _mm512_reduce_add_ps(rs);
  }
  for (int v = 0; v < kV; ++v) _mm512_storeu_ps(colsum + 16 * v, cs[v]);
}

RE_TARGET_AVX512 void sum_exp_split512(const float* S, int mi, const float* rsh,
                                       const float* csh, float* rowsum, float* colsum) {
  for (int v = 0; v < kV; ++v) _mm512_storeu_ps(colsum + 16 * v, _mm512_setzero_ps());
  for (int a = 0; a < mi; ++a) {
    const float* s = S + a * kB;
    const __m512 ra = _mm512_set1_ps(rsh[a]);
    __m512 rs = _mm512_setzero_ps();
    for (int v = 0; v < kV; ++v) {
      const __m512 x = _mm512_loadu_ps(s + 16 * v);
      rs = _mm512_add_ps(rs, exp512(_mm512_sub_ps(x, ra)));
      const __m512 ec = exp512(_mm512_sub_ps(x, _mm512_loadu_ps(csh + 16 * v)));
      _mm512_storeu_ps(colsum + 16 * v, _mm512_add_ps(_mm512_loadu_ps(colsum + 16 * v), ec));
    }
    rowsum[a] = _mm512_reduce_add_ps(rs);
  }
}

RE_TARGET_AVX512 void sum_exp_rows512(const float* S, int mi, const float* rsh, float* rowsum) {
  for (int a = 0; a < mi; ++a) {
    const float* s = S + a * kB;
    const __m512 ra = _mm512_set1_ps(rsh[a]);
    __m512 rs = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      rs = _mm512_add_ps(rs, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * v), ra)));
    }
    rowsum[a] = _mm512_reduce_add_ps(rs);
  }
}

RE_TARGET_AVX512 void h_shared512(float* S, int mi, float K, const float* ra, const float* rc) {
  const __m512 kk = _mm512_set1_ps(K);
  for (int a = 0; a < mi; ++a) {
    float* s = S + a * kB;
    const __m512 r = _mm512_set1_ps(ra[a]);
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * v), kk));
      _mm512_storeu_ps(s + 16 * v,
                       _mm512_mul_ps(e, _mm512_add_ps(r, _mm512_loadu_ps(rc + 16 * v))));
    }
  }
}

RE_TARGET_AVX512 void h_split512(float* S, int mi, const float* la, const float* lc) {
  for (int a = 0; a < mi; ++a) {
    float* s = S + a * kB;
    const __m512 l = _mm512_set1_ps(la[a]);
    for (int v = 0; v < kV; ++v) {
      const __m512 x = _mm512_loadu_ps(s + 16 * v);
      const __m512 e = _mm512_add_ps(exp512(_mm512_sub_ps(x, l)),
                                     exp512(_mm512_sub_ps(x, _mm512_loadu_ps(lc + 16 * v))));
      _mm512_storeu_ps(s + 16 * v, e);
    }
  }
}

RE_TARGET_AVX512 void h_rows512(float* S, int mi, const float* la) {
  for (int a = 0; a < mi; ++a) {
    float* s = S + a * kB;
    const __m512 l = _mm512_set1_ps(la[a]);
#pragma GCC unroll 8
    for (int v = 0; v < kV; ++v) {
      _mm512_storeu_ps(s + 16 * v, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * v), l)));
    }
  }
}

const Kernels<float> kAvx512F = {logits512,        add_hu512,         add_htu512,
                                 max_rows_cols512, max_rows512,       tile_max512,
                                 sum_exp_shared512, sum_exp_split512, sum_exp_rows512,
                                 h_shared512,      h_split512,        h_rows512};

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool cpu_has_avx512() { return false; }
bool cpu_has_avx2() { return false; }
#endif

int resolve_isa(int isa) {
  int best = kIsaPortable;
  if (cpu_has_avx2()) best = kIsaAvx2;
  if (cpu_has_avx512()) best = kIsaAvx512;
  return (isa <= kIsaAuto || isa > best) ? best : isa;
}

template <typename F>
const Kernels<F>& kernels_for(int isa);

template <>
const Kernels<float>& kernels_for<float>(int isa) {
#if RE_CL_X86
  switch (resolve_isa(isa)) {
    case kIsaAvx512:
      return kAvx512F;
    case kIsaAvx2:
      return kAvx2F;
    default:
      break;
  }
#else
  (void)isa;
#endif
  return kPortableF;
}

template <>
const Kernels<double>& kernels_for<double>(int isa) {
#if RE_CL_X86
  switch (resolve_isa(isa)) {
    case kIsaAvx512:
      return kAvx512D;
    case kIsaAvx2:
      return kAvx2D;
    default:
      break;
  }
#else
  (void)isa;
#endif
  return kPortableD;
}

// ================================================================================ drivers

// kB-row blocks of one matrix, zero-padded, in the two layouts of the micro-kernels' operands
// (see the tile primitives): ``pad`` (nb, Dp / 32 chunks, kB, 32) and ``tr`` (nb, 4, D, 32).
template <typename F>
struct Packed {
  int64_t rows = 0, nb = 0, D = 0, Dp = 0;
  Buffer<F> pad, tr;
  const F* pad_block(int64_t I) const { return pad.p + I * kB * Dp; }
  const F* tr_block(int64_t I) const { return tr.p + I * kB * D; }
  int valid(int64_t I) const { return static_cast<int>(std::min<int64_t>(kB, rows - I * kB)); }
};

template <typename F>
void pack(const F* x, int64_t rows, int64_t D, Packed<F>& P, int nt) {
  P.rows = rows;
  P.nb = ceil_div(rows, kB);
  P.D = D;
  P.Dp = ceil_div(D, kPad) * kPad;
  const int64_t Dp = P.Dp;
  P.pad = Buffer<F>(P.nb * kB * Dp);
  P.tr = Buffer<F>(P.nb * kB * D);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t I = 0; I < P.nb; ++I) {
    const int m = P.valid(I);
    F* pad = P.pad.p + I * kB * Dp;
    F* tr = P.tr.p + I * kB * D;
    for (int r = 0; r < kB; ++r) {
      const F* src = x + (I * kB + r) * D;
      for (int64_t q = 0; q * kW < Dp; ++q) {
        const int w = chunk_width(Dp, q);
        F* dst = pad + q * kB * kW + r * w;
        const int64_t n = r < m ? std::min<int64_t>(w, D - q * kW) : 0;
        for (int64_t j = 0; j < n; ++j) dst[j] = src[q * kW + j];
        for (int64_t j = n; j < w; ++j) dst[j] = F(0);
      }
      F* t = tr + (r / kW) * D * kW + r % kW;
      if (r < m) {
        for (int64_t d = 0; d < D; ++d) t[d * kW] = src[d];
      } else {
        for (int64_t d = 0; d < D; ++d) t[d * kW] = F(0);
      }
    }
  }
}

// Online log-sum-exp state of one row: running max m and sum l of exp(s - m), in double.
RE_INLINE void merge(double& m, double& l, double mt, double lt) {
  if (!(lt > 0.0)) return;
  if (mt > m) {
    l = l * std::exp(m - mt) + lt;  // exp(-inf) = 0 for the first contribution
    m = mt;
  } else {
    l += lt * std::exp(mt - m);
  }
}

// Per-thread scratch: one tile and per-row / per-column vectors. Allocated before the
// parallel regions (an exception must not leave one).
template <typename F>
struct Scratch {
  Buffer<F> S{kB * kB};
  F rowmax[kB], colmax[kB], rowsum[kB], colsum[kB], ra[kB], rc[kB];
  Scratch() { std::fill(S.p, S.p + kB * kB, F(0)); }
};

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Logits not in the loss: columns >= mj (padding) and, with self_mask, each row's own
// column self_offset + (row0 + a).
template <typename F>
void mask_tile(F* S, int mi, int mj, bool self_mask, int64_t self_offset, int64_t row0,
               int64_t col0) {
  if (mj < kB) {
    for (int a = 0; a < mi; ++a) std::fill(S + a * kB + mj, S + (a + 1) * kB, kNegInf<F>);
  }
  if (!self_mask) return;
  for (int a = 0; a < mi; ++a) {
    const int64_t c = self_offset + row0 + a - col0;
    if (c >= 0 && c < mj) S[a * kB + c] = kNegInf<F>;
  }
}

// Round-robin tournament over nb blocks: rounds of disjoint tiles (I <= J); a block without
// a partner in a round takes its diagonal tile there (with nb even, the diagonals form one
// extra round). Every tile J >= I appears exactly once.
std::vector<std::vector<std::pair<int64_t, int64_t>>> tournament(int64_t nb) {
  std::vector<std::vector<std::pair<int64_t, int64_t>>> rounds;
  const int64_t n = nb + (nb % 2);  // players; player nb is a dummy when nb is odd
  for (int64_t r = 0; r + 1 < n; ++r) {
    std::vector<std::pair<int64_t, int64_t>> pairs;
    std::vector<std::pair<int64_t, int64_t>> diagonal;
    auto add = [&](int64_t i, int64_t j) {
      if (i >= nb || j >= nb) {
        const int64_t k = std::min(i, j);
        diagonal.emplace_back(k, k);
      } else {
        pairs.emplace_back(std::min(i, j), std::max(i, j));
      }
    };
    add(r, n - 1);
    for (int64_t k = 1; k < n / 2; ++k) add((r + k) % (n - 1), (r - k + n - 1) % (n - 1));
    pairs.insert(pairs.end(), diagonal.begin(), diagonal.end());  // cheaper tiles last
    rounds.push_back(std::move(pairs));
  }
  if (nb % 2 == 0) {
    std::vector<std::pair<int64_t, int64_t>> diagonal;
    for (int64_t i = 0; i < nb; ++i) diagonal.emplace_back(i, i);
    rounds.push_back(std::move(diagonal));
  }
  return rounds;
}

// The tournament's tiles in round order, each with its place among the tiles of its row
// block and of its column block.
struct Tile {
  int64_t I, J;
  int64_t seq_i, seq_j;
};

std::vector<Tile> tournament_order(int64_t nb) {
  std::vector<int64_t> count(nb, 0);
  std::vector<Tile> order;
  for (const auto& tiles : tournament(nb)) {
    for (const auto& [I, J] : tiles) {
      const int64_t seq_i = count[I]++;
      const int64_t seq_j = I == J ? seq_i : count[J]++;
      order.push_back(Tile{I, J, seq_i, seq_j});
    }
  }
  return order;
}

RE_INLINE void spin_pause() {
#if RE_CL_X86
  _mm_pause();
#endif
}

// Runs fn(I, J, thread) over the tiles without barriers between rounds: threads take the
// tiles in round order and a tile starts once the earlier tiles of its two blocks are done
// (per-block counters; a taken tile only waits on tiles taken before it, so this always
// progresses). Each block thus sees its tiles in one fixed order whatever the thread count
// and timing, which is what makes the results deterministic.
template <typename Fn>
void run_tiles(const std::vector<Tile>& order, int64_t nb, int nt, Fn&& fn) {
  std::unique_ptr<std::atomic<int64_t>[]> done(new std::atomic<int64_t>[nb]);
  for (int64_t i = 0; i < nb; ++i) done[i].store(0, std::memory_order_relaxed);
  std::atomic<int64_t> next{0};
  const int64_t count = static_cast<int64_t>(order.size());
  auto wait_for = [](const std::atomic<int64_t>& c, int64_t value) {
    for (int spins = 0; c.load(std::memory_order_acquire) != value; ++spins) {
      if (spins < 256) {
        spin_pause();
      } else {
        std::this_thread::yield();  // the tile we wait on may be on a preempted thread
      }
    }
  };
#pragma omp parallel num_threads(nt)
  {
    FlushDenormals flush;
    const int thread = thread_index();
    for (;;) {
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= count) break;
      const Tile& tile = order[t];
      wait_for(done[tile.I], tile.seq_i);
      if (tile.J != tile.I) wait_for(done[tile.J], tile.seq_j);
      fn(tile.I, tile.J, thread);
      done[tile.I].store(tile.seq_i + 1, std::memory_order_release);
      if (tile.J != tile.I) done[tile.J].store(tile.seq_j + 1, std::memory_order_release);
    }
  }
}

// From the negatives' log-sum-exp lse_neg = m + log l and the positive logit s_pos (from the
// tiles in ``pos``, or in ``extra``), with x = lse_neg - s_pos: the row loss softplus(x),
// lse = s_pos + softplus(x) and log(1 - p_pos) = x - softplus(x), softplus(x) =
// max(x, 0) + log1p(exp(-|x|)). x = -inf (no negatives) gives loss 0 and log(1 - p) = -inf.
template <typename F>
void finish_forward(const ContrastiveProblem& p, const std::vector<double>& m,
                    const std::vector<double>& l, const std::vector<F>& pos, F* stats,
                    F* row_loss, int nt) {
  const F* extra = static_cast<const F*>(p.extra);
  const int64_t M = p.M;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t a = 0; a < M; ++a) {
    double positive = 0.0;
    if (p.pos_in_cols) {
      positive = static_cast<double>(pos[a]);
    } else if (extra != nullptr) {
      positive = static_cast<double>(extra[a]);
    }
    const double x = m[a] + std::log(l[a]) - positive;
    const double tail = std::log1p(std::exp(-std::fabs(x)));
    const double loss = std::max(x, 0.0) + tail;
    stats[a] = static_cast<F>(positive + loss);
    stats[M + a] = static_cast<F>(std::min(x, 0.0) - tail);
    row_loss[a] = static_cast<F>(loss);
  }
}

template <typename F>
void forward_symmetric(const Kernels<F>& k, const ContrastiveProblem& p, F* stats, F* row_loss,
                       int nt) {
  const int64_t M = p.M, D = p.D;
  Packed<F> P;
  pack(static_cast<const F*>(p.u), M, D, P, nt);
  const F inv_t = static_cast<F>(p.inv_t);
  std::vector<double> m(P.nb * kB, -std::numeric_limits<double>::infinity());
  std::vector<double> l(P.nb * kB, 0.0);
  std::vector<F> pos(M);
  std::vector<Scratch<F>> scratch(nt);
  run_tiles(tournament_order(P.nb), P.nb, nt, [&](int64_t I, int64_t J, int thread) {
    Scratch<F>& s = scratch[thread];
    F* S = s.S.p;
    const int mi = P.valid(I), mj = P.valid(J);
    const int64_t r0 = I * kB, c0 = J * kB;
    k.logits(P.tr_block(I), P.tr_block(J), D, mi, mj, inv_t, S);
    mask_tile(S, mi, mj, I == J, 0, r0, c0);
    // The positive pairs in this tile (s symmetric: row c's positive logit is S[p(c), c]),
    // taken out of the tile: the log-sum-exp is over the negatives (see finish_forward).
    // The entry is the positive of both its row and its column (p is an involution).
    for (int a = 0; a < mi; ++a) {
      const int64_t c = (r0 + a + p.half) % M - c0;
      if (c >= 0 && c < mj) {
        pos[r0 + a] = S[a * kB + c];
        pos[c0 + c] = S[a * kB + c];
        S[a * kB + c] = kNegInf<F>;
      }
    }
    if (I == J) {
      k.max_rows(S, mi, s.rowmax);
      for (int a = 0; a < mi; ++a) s.ra[a] = s.rowmax[a] == kNegInf<F> ? F(0) : s.rowmax[a];
      k.sum_exp_rows(S, mi, s.ra, s.rowsum);
      for (int a = 0; a < mi; ++a) merge(m[r0 + a], l[r0 + a], s.ra[a], s.rowsum[a]);
      return;
    }
    const F top = k.max_rows_cols(S, mi, s.rowmax, s.colmax);
    if (top == kNegInf<F>) return;
    F lo = top;
    for (int a = 0; a < mi; ++a) {
      if (s.rowmax[a] > kNegInf<F>) lo = std::min(lo, s.rowmax[a]);
    }
    for (int c = 0; c < mj; ++c) {
      if (s.colmax[c] > kNegInf<F>) lo = std::min(lo, s.colmax[c]);
    }
    if (top - lo <= kSpread) {
      k.sum_exp_shared(S, mi, top, s.rowsum, s.colsum);
      for (int a = 0; a < mi; ++a) merge(m[r0 + a], l[r0 + a], top, s.rowsum[a]);
      for (int c = 0; c < mj; ++c) merge(m[c0 + c], l[c0 + c], top, s.colsum[c]);
    } else {
      for (int a = 0; a < mi; ++a) s.ra[a] = s.rowmax[a] == kNegInf<F> ? F(0) : s.rowmax[a];
      for (int c = 0; c < kB; ++c) s.rc[c] = s.colmax[c] == kNegInf<F> ? F(0) : s.colmax[c];
      k.sum_exp_split(S, mi, s.ra, s.rc, s.rowsum, s.colsum);
      for (int a = 0; a < mi; ++a) merge(m[r0 + a], l[r0 + a], s.ra[a], s.rowsum[a]);
      for (int c = 0; c < mj; ++c) merge(m[c0 + c], l[c0 + c], s.rc[c], s.colsum[c]);
    }
  });
  finish_forward(p, m, l, pos, stats, row_loss, nt);
}

template <typename F>
void forward_general(const Kernels<F>& k, const ContrastiveProblem& p, F* stats, F* row_loss,
                     int nt) {
  const int64_t M = p.M, C = p.C, D = p.D;
  Packed<F> PU, PV;
  pack(static_cast<const F*>(p.u), M, D, PU, nt);
  pack(static_cast<const F*>(p.v), C, D, PV, nt);
  const F inv_t = static_cast<F>(p.inv_t);
  std::vector<double> m(M), l(M);
  std::vector<F> pos(p.pos_in_cols ? M : 0);
  std::vector<Scratch<F>> scratch(nt);
#pragma omp parallel num_threads(nt)
  {
    FlushDenormals flush;
    Scratch<F>& s = scratch[thread_index()];
    F* S = s.S.p;
#pragma omp for schedule(dynamic, 1)
    for (int64_t I = 0; I < PU.nb; ++I) {
      const int mi = PU.valid(I);
      const int64_t r0 = I * kB;
      double mm[kB], ll[kB];  // the negatives' log-sum-exp (the positive joins at the end)
      for (int a = 0; a < mi; ++a) {
        mm[a] = -std::numeric_limits<double>::infinity();
        ll[a] = 0.0;
      }
      for (int64_t J = 0; J < PV.nb; ++J) {
        const int mj = PV.valid(J);
        const int64_t c0 = J * kB;
        k.logits(PU.tr_block(I), PV.tr_block(J), D, mi, mj, inv_t, S);
        mask_tile(S, mi, mj, p.self_mask, p.col_offset, r0, c0);
        if (p.pos_in_cols) {
          for (int a = 0; a < mi; ++a) {
            const int64_t c = p.col_offset + (r0 + a + p.half) % M - c0;
            if (c >= 0 && c < mj) {
              pos[r0 + a] = S[a * kB + c];
              S[a * kB + c] = kNegInf<F>;  // kept apart from the negatives' log-sum-exp
            }
          }
        }
        k.max_rows(S, mi, s.rowmax);
        for (int a = 0; a < mi; ++a) s.ra[a] = s.rowmax[a] == kNegInf<F> ? F(0) : s.rowmax[a];
        k.sum_exp_rows(S, mi, s.ra, s.rowsum);
        for (int a = 0; a < mi; ++a) merge(mm[a], ll[a], s.ra[a], s.rowsum[a]);
      }
      for (int a = 0; a < mi; ++a) {
        m[r0 + a] = mm[a];
        l[r0 + a] = ll[a];
      }
    }
  }
  finish_forward(p, m, l, pos, stats, row_loss, nt);
}

// lse per padded row (+inf on padding, so exp(s - lse) = 0 there) and its minimum per block,
// from the forward's statistics; and 1 - p_pos = exp(log(1 - p_pos)) per row, the
// positive's p - 1 up to its sign (0 on padding).
template <typename F>
void padded_stats(const F* stats, int64_t M, int64_t nb, std::vector<F>& lse_pad,
                  std::vector<F>& block_min, std::vector<F>& one_minus_p) {
  const F* lse = stats;
  lse_pad.assign(nb * kB, std::numeric_limits<F>::infinity());
  std::copy(lse, lse + M, lse_pad.begin());
  block_min.assign(nb, std::numeric_limits<F>::infinity());
  for (int64_t a = 0; a < M; ++a) block_min[a / kB] = std::min(block_min[a / kB], lse[a]);
  one_minus_p.assign(nb * kB, F(0));
  for (int64_t a = 0; a < M; ++a) one_minus_p[a] = std::exp(stats[M + a]);
}

// out (rows, D) = scale * G (in the ``pad`` layout).
template <typename F>
void write_grad(const F* G, int64_t rows, int64_t D, int64_t Dp, double scale, F* out, int nt) {
  const F sc = static_cast<F>(scale);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t a = 0; a < rows; ++a) {
    const F* g = G + (a / kB) * kB * Dp;
    const int r = static_cast<int>(a % kB);
    for (int64_t q = 0; q * kW < D; ++q) {
      const int w = chunk_width(Dp, q);
      const F* gq = g + q * kB * kW + r * w;
      const int64_t n = std::min<int64_t>(w, D - q * kW);
      for (int64_t j = 0; j < n; ++j) out[a * D + q * kW + j] = gq[j] * sc;
    }
  }
}

template <typename F>
void backward_symmetric(const Kernels<F>& k, const ContrastiveProblem& p, double grad,
                        const F* stats, F* grad_u, int nt) {
  const int64_t M = p.M, D = p.D;
  Packed<F> P;
  pack(static_cast<const F*>(p.u), M, D, P, nt);
  const int64_t Dp = P.Dp;
  const F inv_t = static_cast<F>(p.inv_t);
  std::vector<F> lse_pad, block_min, q;
  padded_stats(stats, M, P.nb, lse_pad, block_min, q);
  Buffer<F> G(P.nb * kB * Dp);
  std::fill(G.p, G.p + P.nb * kB * Dp, F(0));
  std::vector<Scratch<F>> scratch(nt);
  run_tiles(tournament_order(P.nb), P.nb, nt, [&](int64_t I, int64_t J, int thread) {
    Scratch<F>& s = scratch[thread];
    F* S = s.S.p;
    const int mi = P.valid(I), mj = P.valid(J);
    const int64_t r0 = I * kB, c0 = J * kB;
    const F* la = lse_pad.data() + r0;
    const F* lc = lse_pad.data() + c0;
    k.logits(P.tr_block(I), P.tr_block(J), D, mi, mj, inv_t, S);
    mask_tile(S, mi, mj, I == J, 0, r0, c0);
    const F top = k.tile_max(S, mi);
    const F lo = std::min(block_min[I], block_min[J]);
    if (top > kNegInf<F> && top - lo <= kSpread) {
      for (int a = 0; a < kB; ++a) {
        const F x = top - la[a];
        s.ra[a] = x > F(-80) ? std::exp(x) : F(0);
      }
      for (int c = 0; c < kB; ++c) {
        const F x = top - lc[c];
        s.rc[c] = x > F(-80) ? std::exp(x) : F(0);
      }
      k.h_shared(S, mi, top, s.ra, s.rc);
    } else {
      k.h_split(S, mi, la, lc);
    }
    // H = P + P^T - 2 Y on the tile (Y symmetric: the positive map is an involution). At a
    // positive pair (a, c), H = (p_a - 1) + (p_c - 1) = -(q_a + q_c), q = 1 - p_pos from the
    // forward: P + P^T - 2 there would cancel to noise for confident rows.
    for (int a = 0; a < mi; ++a) {
      const int64_t c = (r0 + a + p.half) % M - c0;
      if (c >= 0 && c < mj) S[a * kB + c] = -(q[r0 + a] + q[c0 + c]);
    }
    k.add_hu(S, P.pad_block(J), mi, mj, Dp, G.p + r0 * Dp);
    if (I != J) k.add_htu(S, P.pad_block(I), mi, mj, Dp, G.p + c0 * Dp);
  });
  write_grad(G.p, M, D, Dp, grad * p.inv_t / static_cast<double>(M), grad_u, nt);
}

template <typename F>
void backward_general(const Kernels<F>& k, const ContrastiveProblem& p, double grad,
                      const F* stats, F* grad_u, F* grad_v, int nt) {
  const int64_t M = p.M, C = p.C, D = p.D;
  Packed<F> PU, PV;
  pack(static_cast<const F*>(p.u), M, D, PU, nt);
  pack(static_cast<const F*>(p.v), C, D, PV, nt);
  const int64_t Dp = PU.Dp;
  const F inv_t = static_cast<F>(p.inv_t);
  std::vector<F> lse_pad, block_min, q;
  padded_stats(stats, M, PU.nb, lse_pad, block_min, q);
  Buffer<F> GU(PU.nb * kB * Dp);
  std::fill(GU.p, GU.p + PU.nb * kB * Dp, F(0));
  Buffer<F> GV(grad_v ? PV.nb * kB * Dp : 0);
  if (grad_v) std::fill(GV.p, GV.p + PV.nb * kB * Dp, F(0));

  // H = P - Y on tile (I, J), in S; at the positive p - 1 = -q (see backward_symmetric).
  auto tile_h = [&](Scratch<F>& s, int64_t I, int64_t J, int mi, int mj) {
    F* S = s.S.p;
    const int64_t r0 = I * kB, c0 = J * kB;
    k.logits(PU.tr_block(I), PV.tr_block(J), D, mi, mj, inv_t, S);
    mask_tile(S, mi, mj, p.self_mask, p.col_offset, r0, c0);
    k.h_rows(S, mi, lse_pad.data() + r0);
    if (p.pos_in_cols) {
      for (int a = 0; a < mi; ++a) {
        const int64_t c = p.col_offset + (r0 + a + p.half) % M - c0;
        if (c >= 0 && c < mj) S[a * kB + c] = -q[r0 + a];
      }
    }
  };

  std::vector<Scratch<F>> scratch(nt);
#pragma omp parallel num_threads(nt)
  {
    FlushDenormals flush;
    Scratch<F>& s = scratch[thread_index()];
#pragma omp for schedule(dynamic, 1)
    for (int64_t I = 0; I < PU.nb; ++I) {
      const int mi = PU.valid(I);
      for (int64_t J = 0; J < PV.nb; ++J) {
        const int mj = PV.valid(J);
        tile_h(s, I, J, mi, mj);
        k.add_hu(s.S.p, PV.pad_block(J), mi, mj, Dp, GU.p + I * kB * Dp);
      }
    }
    if (grad_v) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t J = 0; J < PV.nb; ++J) {
        const int mj = PV.valid(J);
        for (int64_t I = 0; I < PU.nb; ++I) {
          const int mi = PU.valid(I);
          tile_h(s, I, J, mi, mj);
          k.add_htu(s.S.p, PU.pad_block(I), mi, mj, Dp, GV.p + J * kB * Dp);
        }
      }
    }
  }
  const double scale = grad * p.inv_t / static_cast<double>(M);
  write_grad(GU.p, M, D, Dp, scale, grad_u, nt);
  if (grad_v) write_grad(GV.p, C, D, Dp, scale, grad_v, nt);
}

void check(const ContrastiveProblem& p) {
  if (p.M < 1 || p.D < 1 || p.C < 0 || (!p.symmetric && p.C > 0 && p.v == nullptr) ||
      p.u == nullptr) {
    throw std::invalid_argument("contrastive_loss: bad sizes or null pointers");
  }
  if (p.symmetric && (p.M % 2 != 0 || p.half != p.M / 2 || !p.self_mask || !p.pos_in_cols)) {
    throw std::invalid_argument("contrastive_loss: the symmetric case is NT-Xent on 2N rows");
  }
  if (p.pos_in_cols && !p.symmetric &&
      (p.col_offset < 0 || p.col_offset + p.M > p.C || p.half < 0)) {
    throw std::invalid_argument("contrastive_loss: positive columns out of range");
  }
}

template <typename F>
void forward_t(const ContrastiveProblem& p, void* stats, void* row_loss, int isa, int nt) {
  const Kernels<F>& k = kernels_for<F>(isa);
  if (p.symmetric) {
    forward_symmetric<F>(k, p, static_cast<F*>(stats), static_cast<F*>(row_loss), nt);
  } else {
    forward_general<F>(k, p, static_cast<F*>(stats), static_cast<F*>(row_loss), nt);
  }
}

template <typename F>
void backward_t(const ContrastiveProblem& p, double grad, const void* stats, void* grad_u,
                void* grad_v, int isa, int nt) {
  const Kernels<F>& k = kernels_for<F>(isa);
  if (p.symmetric) {
    backward_symmetric<F>(k, p, grad, static_cast<const F*>(stats), static_cast<F*>(grad_u),
                          nt);
  } else {
    backward_general<F>(k, p, grad, static_cast<const F*>(stats), static_cast<F*>(grad_u),
                        static_cast<F*>(grad_v), nt);
  }
}

}  // namespace

void contrastive_forward(const ContrastiveProblem& p, void* stats, void* row_loss, int isa,
                         int num_threads) {
  check(p);
  num_threads = resolve_threads(num_threads);
  if (p.is_double) {
    forward_t<double>(p, stats, row_loss, isa, num_threads);
  } else {
    forward_t<float>(p, stats, row_loss, isa, num_threads);
  }
}

void contrastive_backward(const ContrastiveProblem& p, double grad, const void* stats,
                          void* grad_u, void* grad_v, int isa, int num_threads) {
  check(p);
  num_threads = resolve_threads(num_threads);
  if (p.symmetric) grad_v = nullptr;
  if (p.is_double) {
    backward_t<double>(p, grad, stats, grad_u, grad_v, isa, num_threads);
  } else {
    backward_t<float>(p, grad, stats, grad_u, grad_v, isa, num_threads);
  }
}

const char* contrastive_isa_name(int isa) {
  switch (resolve_isa(isa)) {
    case kIsaAvx512:
      return "avx512";
    case kIsaAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

}  // namespace radengine::cpu
