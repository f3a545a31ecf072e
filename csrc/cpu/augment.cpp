// augment_views on the CPU. Math, rounding rules and memory traffic: cpu/augment.h.
//
// Every floating-point operation below rounds on its own, in the reference's order: GCC
// contracts a * b + c into an FMA in C++ whenever the target has one, which would move
// results off torch's by an ulp here and there, so contraction is off for this file and
// the multiply-adds that torch fuses are written as madd<kFma>(). (The pragma comes before
// the includes so that inline functions from headers get the same options and inline.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#include "cpu/augment.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/augment_avx2.h"
#include "cpu/convert.h"
#include "cpu/memory.h"
#include "cpu/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RE_AUGMENT_X86 1
#define RE_TARGET_AVX2_FMA __attribute__((target("avx2,fma")))
#else
#define RE_AUGMENT_X86 0
#define RE_TARGET_AVX2_FMA
#endif

#if defined(__GNUC__) || defined(__clang__)
#define RE_INLINE inline __attribute__((always_inline))
#else
#define RE_INLINE inline
#endif

namespace radengine::cpu {
namespace {

constexpr float kGrayR = 0.299f, kGrayG = 0.587f, kGrayB = 0.114f;
constexpr float kTwoPi = static_cast<float>(2.0 * 3.14159265358979323846);
constexpr int kMaxBlurRadius = 64;  // sigma <= 16 -> radius <= 48

// ---------------------------------------------------------------------------- scalar ops

template <bool kFma>
RE_INLINE float madd(float a, float b, float c) {
  if constexpr (kFma) {
    return __builtin_fmaf(a, b, c);
  } else {
    return a * b + c;
  }
}

RE_INLINE float clamp01(float y) {
  y = y > 0.f ? y : 0.f;  // torch.clamp_(0, 1) = min(max(y, 0), 1) on non-NaN values
  return y < 1.f ? y : 1.f;
}

// torch.remainder(m, 6) = fmod, then + 6 where negative. kFast: m in (-6, 18), branch-free
// and exact (m - 6 and m - 12 are representable whenever they are the remainder).
template <bool kFast>
RE_INLINE float remainder6(float m) {
  if constexpr (kFast) {
    float r = m >= 6.f ? m - 6.f : m;
    r = r >= 6.f ? r - 6.f : r;
    return r < 0.f ? r + 6.f : r;
  } else {
    float r = std::fmod(m, 6.f);
    return (r != 0.f && r < 0.f) ? r + 6.f : r;
  }
}

// Chris Wellons' lowbias32, as _mix32 in augment.py.
RE_INLINE uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  h ^= h >> 16;
  return h;
}

// Branch-free fp32 log / exp / cos, so that the loops calling them vectorise 8 (AVX2) or 4
// (SSE2) lanes wide (libm's logf/cosf/powf are scalar calls; torch uses SLEEF). Each is
// within ~2 ulp of the exact value (checked against double in tests); torch's may differ
// from them by an ulp or two, which moves the noise / gamma outputs by < 1e-6.

// Round to the nearest integer (ties to even) for |t| < 2^22, without a libm call.
RE_INLINE float round_f(float t) {
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
  return (t + kMagic) - kMagic;
}

// ln(x) for a normal float x > 0 (subnormals are not needed here).
RE_INLINE float log_f(float x) {
  const uint32_t u = float_bits(x);
  int32_t e = static_cast<int32_t>(u >> 23) - 127;
  // mantissa in [1, 2), then folded to [sqrt(1/2), sqrt(2)).
  float m = bits_float((u & 0x007FFFFFu) | 0x3F800000u);
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  // ln m = 2 atanh(f), f = (m - 1) / (m + 1), |f| <= 0.1716; the series to f^9 is within
  // 2e-9 (relative).
  const float f = (m - 1.f) / (m + 1.f), f2 = f * f;
  float p = 1.f / 9.f;
  p = p * f2 + 1.f / 7.f;
  p = p * f2 + 1.f / 5.f;
  p = p * f2 + 1.f / 3.f;
  const float lnm = (2.f * f) + (2.f * f) * (f2 * p);
  // e ln 2 in two parts: e * kLn2Hi is exact (kLn2Hi has 9 significant bits, |e| < 2^8).
  const float fe = static_cast<float>(e);
  return (fe * 0.693359375f + (lnm + fe * -2.12194440e-4f));
}

// exp(t) for t in [-87, 1] (callers clamp): 2^k e^r, |r| <= ln(2) / 2.
RE_INLINE float exp_f(float t) {
  const float k = round_f(t * 1.44269504f);
  const float r = (t - k * 0.693359375f) - k * -2.12194440e-4f;  // k * hi is exact
  float p = 1.f / 5040.f;  // e^r to r^7: within 6e-9 (relative)
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t ki = static_cast<int32_t>(k);  // in [-126, 2]: 2^k is a normal float
  return p * bits_float(static_cast<uint32_t>(ki + 127) << 23);
}

// cos(x) for x in [0, 8): x - k pi/2 in three parts (Cody-Waite; each k * part exact for
// k <= 5), then the Taylor polynomials of cos and sin on |r| <= pi/4.
RE_INLINE float cos_f(float x) {
  const float k = round_f(x * 0.636619772f);  // x / (pi / 2)
  const float r = ((x - k * 1.5703125f) - k * 4.83751297e-4f) - k * 7.54978995e-8f;
  const float r2 = r * r;
  float c = 1.f / 40320.f;
  c = c * r2 - 1.f / 720.f;
  c = c * r2 + 1.f / 24.f;
  c = c * r2 - 0.5f;
  c = c * r2 + 1.f;
  float s = 1.f / 362880.f;
  s = s * r2 - 1.f / 5040.f;
  s = s * r2 + 1.f / 120.f;
  s = s * r2 - 1.f / 6.f;
  s = r + r * (s * r2);
  // cos(r + k pi/2) = cos r, -sin r, -cos r, sin r for k mod 4 = 0, 1, 2, 3.
  const int32_t q = static_cast<int32_t>(k) & 3;
  const float v = (q & 1) != 0 ? s : c;
  return ((q + 1) & 2) != 0 ? -v : v;
}

// sqrt(x) for float x >= 0 within ~2 ulp, branch-free (std::sqrt keeps an errno branch
// under GCC's default -fmath-errno that stops the loop from vectorising, and compiling
// with -fno-math-errno slowed other loops of this file): a bit-trick estimate of
// 1 / sqrt(x) (< 4% off), three Newton steps, times x.
RE_INLINE float sqrt_f(float x) {
  const bool pos = x > 1e-30f;
  const float xs = pos ? x : 1.f;
  float r = bits_float(0x5F375A86u - (float_bits(xs) >> 1));
  for (int it = 0; it < 3; ++it) r = r * (1.5f - (0.5f * xs) * (r * r));
  return pos ? xs * r : 0.f;
}

// ---------------------------------------------------------------------------- scratch

struct Scratch {
  std::vector<float> y;    // (Cu, h, w): the view being built
  std::vector<float> tmp;  // (h, w): blur's horizontal pass
  std::vector<float> u, rowx, rowy, vcoord;  // geometry: w, w, w, h
  std::vector<float> wnw, wne, wsw, wse, inside;  // per output row: weights, mask (w each)
  std::vector<int32_t> off, dx, dy;               // per output row: tap offsets (w each)
  std::vector<float> taps;                        // (src channels, 4, w)
  std::vector<uint32_t> pair;                     // (2, w): int16 tap pairs
  std::vector<uint64_t> pair64;                   // (2, w): RGB tap pairs
  std::vector<float> line;                        // blur: padded line / noise row / output
  std::vector<float> chan;                        // (C, w): one output row, all channels

  void reserve(int64_t Cu, int64_t C, int64_t h, int64_t w, int src) {
    y.resize(static_cast<size_t>(Cu * h * w));
    tmp.resize(static_cast<size_t>(h * w));
    for (auto* v : {&u, &rowx, &rowy, &wnw, &wne, &wsw, &wse, &inside}) {
      v->resize(static_cast<size_t>(w));
    }
    vcoord.resize(static_cast<size_t>(h));
    off.resize(static_cast<size_t>(w));
    dx.resize(static_cast<size_t>(w));
    dy.resize(static_cast<size_t>(w));
    taps.resize(static_cast<size_t>(src * 4 * w));
    pair.resize(static_cast<size_t>(2 * w));
    pair64.resize(static_cast<size_t>(2 * w));
    line.resize(static_cast<size_t>(std::max(h, w) + 2 * kMaxBlurRadius + 2));
    chan.resize(static_cast<size_t>(C * w));
  }
};

struct RowView {
  const float* p;     // the row's kAugmentRowFields values
  const float* win;   // (C, 2) or null
  int64_t v, b;
  float lo_img, hi_img;  // min-max mode: the slice's range
};

// ---------------------------------------------------------------------------- steps 1-2

// Phase A of one output row (vectorisable; every array restrict): grid point, outside
// mask, grid_sample's unnormalise + border clamp, bilinear weights, tap offsets.
template <bool kFma>
RE_INLINE void coords_row(const float* __restrict__ rowx, const float* __restrict__ rowy,
                          float bxv, float byv, int32_t w32, float halfW, float halfH,
                          float maxX, float maxY, int32_t xmax, int32_t W1, int32_t H1,
                          int32_t sx,
                          int32_t sy, float* __restrict__ inside, float* __restrict__ nw,
                          float* __restrict__ ne, float* __restrict__ sw,
                          float* __restrict__ se, int32_t* __restrict__ off,
                          int32_t* __restrict__ dxo, int32_t* __restrict__ dyo, int32_t j0) {
  for (int32_t j = j0; j < w32; ++j) {
    const float gx = rowx[j] + bxv, gy = rowy[j] + byv;
    const bool out_x = std::fabs(gx) > 1.f, out_y = std::fabs(gy) > 1.f;
    inside[j] = (out_x | out_y) ? 0.f : 1.f;
    float ix = madd<kFma>(gx + 1.f, halfW, -0.5f);
    float iy = madd<kFma>(gy + 1.f, halfH, -0.5f);
    ix = ix > 0.f ? ix : 0.f;  // torch: min(size - 1, max(s, 0))
    ix = maxX < ix ? maxX : ix;
    iy = iy > 0.f ? iy : 0.f;
    iy = maxY < iy ? maxY : iy;
    int32_t xi = static_cast<int32_t>(ix);  // floor: ix >= 0
    xi = xi < xmax ? xi : xmax;
    const int32_t yi = static_cast<int32_t>(iy);
    const float wx = ix - static_cast<float>(xi), wy = iy - static_cast<float>(yi);
    const float e = 1.f - wx, so = 1.f - wy;
    nw[j] = so * e;
    ne[j] = so * wx;
    sw[j] = wy * e;
    se[j] = wy * wx;
    off[j] = yi * sy + xi * sx;
    dxo[j] = xi < W1 ? sx : 0;
    dyo[j] = yi < H1 ? sy : 0;
  }
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr bool kLittleEndian = true;
#else
constexpr bool kLittleEndian = false;
#endif

// (x, x + 1) int16 pairs of the top and bottom rows -> the 4 float tap arrays.
RE_INLINE void split_pairs(const uint32_t* __restrict__ top, const uint32_t* __restrict__ bot,
                           float* __restrict__ t, int32_t j0, int32_t w) {
  for (int32_t j = j0; j < w; ++j) {
    t[j] = static_cast<float>(static_cast<int16_t>(top[j] & 0xFFFFu));
    t[w + j] = static_cast<float>(static_cast<int16_t>(top[j] >> 16));
    t[2 * w + j] = static_cast<float>(static_cast<int16_t>(bot[j] & 0xFFFFu));
    t[3 * w + j] = static_cast<float>(static_cast<int16_t>(bot[j] >> 16));
  }
}

// (x, x + 1) RGB pixel pairs (6 bytes, little-endian in a uint64) -> 3 x 4 tap arrays.
RE_INLINE void split_pairs_rgb(const uint64_t* __restrict__ top,
                               const uint64_t* __restrict__ bot, float* __restrict__ t,
                               int32_t w) {
  for (int c = 0; c < 3; ++c) {
    float* tc = t + c * 4 * w;
    const int lo = 8 * c, hi = 8 * (c + 3);
    for (int32_t j = 0; j < w; ++j) {
      tc[j] = static_cast<float>(static_cast<uint32_t>((top[j] >> lo) & 0xFFu));
      tc[w + j] = static_cast<float>(static_cast<uint32_t>((top[j] >> hi) & 0xFFu));
      tc[2 * w + j] = static_cast<float>(static_cast<uint32_t>((bot[j] >> lo) & 0xFFu));
      tc[3 * w + j] = static_cast<float>(static_cast<uint32_t>((bot[j] >> hi) & 0xFFu));
    }
  }
}

template <bool kFma, typename In>
RE_INLINE void sample_view(const AugmentArgs& a, const RowView& r, Scratch& s, int Cu) {
  const int64_t H = a.H, W = a.W, h = a.h, w = a.w;
  const float* p = r.p;
  const float fW = static_cast<float>(W), fH = static_cast<float>(H);
  // The reference's per-sample coefficients, op for op (fp32).
  const float y0 = p[kRowCropY0], x0 = p[kRowCropX0], ch = p[kRowCropH], cw = p[kRowCropW];
  const float fx = p[kRowFlipX], fy = p[kRowFlipY], cs = p[kRowCos], sn = p[kRowSin];
  const float cx = (x0 + cw / 2.f) - 0.5f, cy = (y0 + ch / 2.f) - 0.5f;
  const float c0x = (2.f * cx + 1.f) / fW - 1.f, c0y = (2.f * cy + 1.f) / fH - 1.f;
  const float ax = (cs * cw) * fx, ay = (sn * cw) * fx;
  const float bx = (-sn * ch) * fy, by = (cs * ch) * fy;
  const float a2x = (2.f * ax) / fW, a2y = (2.f * ay) / fH;
  const float b2x = (2.f * bx) / fW, b2y = (2.f * by) / fH;
  const float fw = static_cast<float>(w), fh = static_cast<float>(h);
  float* rowx = s.rowx.data();
  float* rowy = s.rowy.data();
  for (int64_t j = 0; j < w; ++j) {
    const float u = (static_cast<float>(j) + 0.5f) / fw - 0.5f;
    rowx[j] = c0x + a2x * u;
    rowy[j] = c0y + a2y * u;
  }
  // grid_sample's unnormalise (align_corners=False) and border clamp.
  const float halfW = fW / 2.f, halfH = fH / 2.f, maxX = fW - 1.f, maxY = fH - 1.f;

  // Windows of the output channels: (lo, span); span <= 0 maps every tap to 0.
  float lo[kHuWindowMaxChannels], span[kHuWindowMaxChannels];
  if (!a.rgb) {
    for (int c = 0; c < Cu; ++c) {
      float l = r.win[2 * c], hi = r.win[2 * c + 1];
      if (a.minmax) {
        const float rng = r.hi_img - r.lo_img;
        l = r.lo_img + l * rng;
        hi = r.lo_img + hi * rng;
      }
      lo[c] = l;
      span[c] = hi - l;
    }
  }

  const In* x = static_cast<const In*>(a.x) + r.b * a.xs[0];
  // In-slice offsets fit int32 (Python checks), so the coordinate loop vectorises.
  const int32_t sy = static_cast<int32_t>(a.xs[1]), sx = static_cast<int32_t>(a.xs[2]);
  const int64_t sc = a.xs[3];
  const int32_t w32 = static_cast<int32_t>(w);
  const int32_t W1 = static_cast<int32_t>(W - 1), H1 = static_cast<int32_t>(H - 1);
  // Pair loads: int16 with unit x stride and W >= 2 (little-endian). The left tap is then
  // kept <= W - 2: at the right edge (s = W - 1) the pair (W - 2, W - 1) with weights
  // (0, 1) blends to the same bits as (W - 1, W - 1) with (1, 0) (the FMA terms with a
  // zero weight add exactly 0).
  // RGB likewise when pixels are 3 contiguous bytes (HWC): one 6-byte load per pair.
  const bool pairs = kLittleEndian && !a.rgb && sx == 1 && W >= 2;
  const bool pairs_rgb = kLittleEndian && a.rgb && sx == 3 && sc == 1 && W >= 2;
  const int32_t xmax = (pairs || pairs_rgb) ? W1 - 1 : W1;
  const int src = a.rgb ? 3 : 1;
  float* nw = s.wnw.data();
  float* ne = s.wne.data();
  float* sw = s.wsw.data();
  float* se = s.wse.data();
  float* inside = s.inside.data();
  int32_t* off = s.off.data();
  int32_t* dxo = s.dx.data();
  int32_t* dyo = s.dy.data();
  float* taps = s.taps.data();

  for (int64_t i = 0; i < h; ++i) {
    const float vv = (static_cast<float>(i) + 0.5f) / fh - 0.5f;
    const float bxv = b2x * vv, byv = b2y * vv;
    int32_t j0 = 0;  // pixels [0, j0) of the row are done
#if RE_AUGMENT_HAVE_AVX2_ROW
    if constexpr (kFma) {
      if (pairs) {
        j0 = ct_row_avx2(reinterpret_cast<const int16_t*>(x), rowx, rowy, bxv, byv, halfW, halfH,
                         maxX, maxY, xmax, H1, sy, Cu, lo, span, s.y.data() + i * w, h * w, w32);
      }
    }
#endif
    // Phase A (vectorisable): coordinates, weights, tap positions.
    coords_row<kFma>(rowx, rowy, bxv, byv, w32, halfW, halfH, maxX, maxY, xmax, W1, H1, sx,
                     sy, inside, nw, ne, sw, se, off, dxo, dyo, j0);
    // Phase B (gathers): the 4 taps of each source channel. Contiguous int16 rows: each
    // tap pair (x, x + 1) is one 32-bit load, split in a vectorised loop.
    if (pairs) {
      const int16_t* x16 = reinterpret_cast<const int16_t*>(x);
      uint32_t* top = s.pair.data();
      uint32_t* bot = top + w;
      for (int64_t j = j0; j < w; ++j) {
        const int16_t* q = x16 + off[j];
        std::memcpy(top + j, q, sizeof(uint32_t));
        std::memcpy(bot + j, q + dyo[j], sizeof(uint32_t));
      }
      split_pairs(top, bot, taps, j0, w32);
    } else if (pairs_rgb) {
      const uint8_t* x8 = reinterpret_cast<const uint8_t*>(x);
      uint64_t* top = s.pair64.data();
      uint64_t* bot = top + w;
      for (int64_t j = 0; j < w; ++j) {
        const uint8_t* q = x8 + off[j];
        uint64_t t0 = 0, b0 = 0;
        std::memcpy(&t0, q, 6);
        std::memcpy(&b0, q + dyo[j], 6);
        top[j] = t0;
        bot[j] = b0;
      }
      split_pairs_rgb(top, bot, taps, w32);
    }
    for (int k = 0; k < ((pairs || pairs_rgb) ? 0 : src); ++k) {
      const In* xk = x + k * sc;
      float* t = taps + k * 4 * w;
      for (int64_t j = 0; j < w; ++j) {
        const In* q = xk + off[j];
        t[j] = static_cast<float>(q[0]);
        t[w + j] = static_cast<float>(q[dxo[j]]);
        t[2 * w + j] = static_cast<float>(q[dyo[j]]);
        t[3 * w + j] = static_cast<float>(q[dyo[j] + dxo[j]]);
      }
    }
    // Phase C (vectorisable): intensity of each tap, blend, fill outside.
    for (int c = 0; c < Cu; ++c) {
      float* yrow = s.y.data() + (c * h + i) * w;
      const float* t = taps + (a.rgb ? c : 0) * 4 * w;
      if (a.rgb) {
        for (int64_t j = 0; j < w; ++j) {
          const float v00 = t[j] / 255.f, v01 = t[w + j] / 255.f;
          const float v10 = t[2 * w + j] / 255.f, v11 = t[3 * w + j] / 255.f;
          const float val =
              madd<kFma>(v11, se[j], madd<kFma>(v10, sw[j], madd<kFma>(v01, ne[j], v00 * nw[j])));
          yrow[j] = inside[j] != 0.f ? val : 0.f;
        }
      } else if (span[c] > 0.f) {
        const float l = lo[c], sp = span[c];
        for (int64_t j = j0; j < w; ++j) {
          const float v00 = clamp01((t[j] - l) / sp), v01 = clamp01((t[w + j] - l) / sp);
          const float v10 = clamp01((t[2 * w + j] - l) / sp);
          const float v11 = clamp01((t[3 * w + j] - l) / sp);
          const float val =
              madd<kFma>(v11, se[j], madd<kFma>(v10, sw[j], madd<kFma>(v01, ne[j], v00 * nw[j])));
          yrow[j] = inside[j] != 0.f ? val : 0.f;
        }
      } else {
        std::fill(yrow + j0, yrow + w, 0.f);
      }
    }
  }
}

// ---------------------------------------------------------------------------- steps 3-7

// gray(y) of pixel k: the luma for 3 channels, the channel mean for C != 3, y for 1.
RE_INLINE float gray_at(const float* y, int64_t N, int Cu, int64_t k) {
  if (Cu == 1) return y[k];
  if (Cu == 3) return (y[k] * kGrayR + y[N + k] * kGrayG) + y[2 * N + k] * kGrayB;
  float sum = y[k];
  for (int c = 1; c < Cu; ++c) sum += y[c * N + k];
  return sum / static_cast<float>(Cu);
}

RE_INLINE void brightness(float* y, int64_t n, float f) {
  for (int64_t k = 0; k < n; ++k) y[k] = clamp01(y[k] * f);
}

RE_INLINE void contrast(float* y, int64_t N, int Cu, float f) {
  // The view's mean gray, accumulated in double in 8 independent lanes (vectorises).
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= N; k += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(gray_at(y, N, Cu, k + l));
  }
  for (; k < N; ++k) acc[0] += static_cast<double>(gray_at(y, N, Cu, k));
  const double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  const float mean = static_cast<float>(sum) / static_cast<float>(N);
  const float add = (1.f - f) * mean;
  const int64_t n = Cu * N;
  for (int64_t k = 0; k < n; ++k) y[k] = clamp01(y[k] * f + add);
}

RE_INLINE void saturation(float* y, int64_t N, float f) {  // 3 channels
  const float g = 1.f - f;
  float* r = y;
  float* gr = y + N;
  float* bl = y + 2 * N;
  for (int64_t k = 0; k < N; ++k) {
    const float gray = ((r[k] * kGrayR + gr[k] * kGrayG) + bl[k] * kGrayB) * g;
    r[k] = clamp01(r[k] * f + gray);
    gr[k] = clamp01(gr[k] * f + gray);
    bl[k] = clamp01(bl[k] * f + gray);
  }
}

template <bool kFast>
RE_INLINE void hue_impl(float* __restrict__ y, int64_t N, float d) {
  const float shift = 6.f * d;
  float* r = y;
  float* g = y + N;
  float* b = y + 2 * N;
  for (int64_t k = 0; k < N; ++k) {
    const float rr = r[k], gg = g[k], bb = b[k];
    const float maxc = std::max(std::max(rr, gg), bb);
    const float chroma = maxc - std::min(std::min(rr, gg), bb);
    const bool is_r = maxc == rr, is_g = maxc == gg;
    float h6 = is_r ? gg - bb : (is_g ? bb - rr : rr - gg);
    h6 = h6 / (chroma > 0.f ? chroma : 1.f) + (is_r ? 0.f : (is_g ? 2.f : 4.f));
    h6 = h6 + shift;
    const float n[3] = {5.f, 3.f, 1.f};
    float outc[3];
    for (int c = 0; c < 3; ++c) {
      const float m = remainder6<kFast>(h6 + n[c]);
      float ramp = std::min(m, 4.f - m);
      ramp = clamp01(ramp);
      outc[c] = maxc - ramp * chroma;
    }
    r[k] = outc[0];
    g[k] = outc[1];
    b[k] = outc[2];
  }
}

// 3 channels, _adjust_hue's closed form. With |d| < 1 and pixels in [0, 1], the ramp's
// argument h6 + 6 d + n lies in (-6, 18): the branch-free remainder.
RE_INLINE void hue(float* y, int64_t N, float d) {
  if (std::fabs(d) < 1.f) {
    hue_impl<true>(y, N, d);
  } else {
    hue_impl<false>(y, N, d);
  }
}

RE_INLINE void grayscale(float* y, int64_t N) {
  for (int64_t k = 0; k < N; ++k) {
    const float gray = (y[k] * kGrayR + y[N + k] * kGrayG) + y[2 * N + k] * kGrayB;
    y[k] = y[N + k] = y[2 * N + k] = gray;
  }
}

RE_INLINE void gamma_curve(float* y, int64_t n, float g) {
  if (!(g > 0.f && g < 1e4f)) {  // outside the spec's range: libm
    for (int64_t k = 0; k < n; ++k) y[k] = clamp01(std::pow(y[k], g));
    return;
  }
  // y in [0, 1]: y^g = exp(g ln y); 0, subnormal y and results below 2^-125 give 0 (the
  // true value is < 1e-37 there).
  for (int64_t k = 0; k < n; ++k) {
    const float yk = y[k];
    const bool tiny = !(yk > 1.17549435e-38f);
    const float t = g * log_f(tiny ? 1.f : yk);
    const float pw = exp_f(t > -86.5f ? t : -86.5f);
    y[k] = clamp01(tiny || t <= -86.5f ? 0.f : pw);
  }
}

RE_INLINE void solarize(float* y, int64_t n, float thr) {
  for (int64_t k = 0; k < n; ++k) y[k] = y[k] >= thr ? 1.f - y[k] : y[k];
}

// Separable Gaussian, replicate borders, one plane (h, w) in place via tmp.
RE_INLINE void blur_plane(float* y, float* tmp, float* line, int64_t h, int64_t w,
                          const float* wt, int R) {
  // Horizontal: each row into a padded line, then sum_k w_k line[j + k].
  for (int64_t i = 0; i < h; ++i) {
    const float* row = y + i * w;
    for (int k = 0; k < R; ++k) {
      line[k] = row[0];
      line[R + w + k] = row[w - 1];
    }
    std::copy(row, row + w, line + R);
    float* o = tmp + i * w;
    for (int64_t j = 0; j < w; ++j) o[j] = wt[0] * line[j];
    for (int k = 1; k <= 2 * R; ++k) {
      const float wk = wt[k];
      const float* l = line + k;
      for (int64_t j = 0; j < w; ++j) o[j] = o[j] + wk * l[j];
    }
  }
  // Vertical: sum_k w_k tmp[clamp(i + k - R)].
  for (int64_t i = 0; i < h; ++i) {
    float* o = y + i * w;
    const float* r0 = tmp + std::min<int64_t>(std::max<int64_t>(i - R, 0), h - 1) * w;
    for (int64_t j = 0; j < w; ++j) o[j] = wt[0] * r0[j];
    for (int k = 1; k <= 2 * R; ++k) {
      const float wk = wt[k];
      const float* rk = tmp + std::min<int64_t>(std::max<int64_t>(i - R + k, 0), h - 1) * w;
      for (int64_t j = 0; j < w; ++j) o[j] = o[j] + wk * rk[j];
    }
  }
}

RE_INLINE void blur(float* y, int Cu, Scratch& s, int64_t h, int64_t w, float sigma) {
  const int R = static_cast<int>(std::ceil(3.f * sigma));
  if (R < 0 || R > kMaxBlurRadius) throw std::invalid_argument("augment_views: blur sigma out of range");
  float wt[2 * kMaxBlurRadius + 1];
  double sum = 0.0;
  for (int k = -R; k <= R; ++k) {
    const float q = static_cast<float>(k) / sigma;
    wt[k + R] = std::exp(-0.5f * (q * q));
    sum += wt[k + R];
  }
  const float total = static_cast<float>(sum);
  for (int k = 0; k <= 2 * R; ++k) wt[k] = wt[k] / total;
  for (int c = 0; c < Cu; ++c) {
    blur_plane(y + c * h * w, s.tmp.data(), s.line.data(), h, w, wt, R);
  }
}

// ---------------------------------------------------------------------------- steps 8-9

// z of one output row (c, i) of view v: Box-Muller on the top 24 bits of noise_hash.
// (Kept inline in the row kernel: calling it through a function pointer, e.g. to pick an
// AVX-512 build of it, stopped GCC from vectorising the hue loop of the same kernel.)
RE_INLINE void noise_row(float* z, int64_t w, uint64_t seed, uint32_t v, uint32_t c,
                         uint32_t i) {
  uint32_t k = mix32(static_cast<uint32_t>(seed) ^ 0x9E3779B9u);
  k = mix32(k ^ static_cast<uint32_t>(seed >> 32));
  k = mix32(k ^ v);
  k = mix32(k ^ c);
  k = mix32(k ^ i);
  const int32_t w32 = static_cast<int32_t>(w);
  for (int32_t j = 0; j < w32; ++j) {
    const uint32_t wa = mix32(k ^ static_cast<uint32_t>(2 * j));
    const uint32_t wb = mix32(k ^ static_cast<uint32_t>(2 * j + 1));
    const float u1 = static_cast<float>(static_cast<int32_t>((wa >> 8) + 1u)) * 0x1p-24f;
    const float u2 = static_cast<float>(static_cast<int32_t>(wb >> 8)) * 0x1p-24f;
    const float r = sqrt_f(log_f(u1) * -2.f);
    z[j] = r * cos_f(u2 * kTwoPi);
  }
}

// One output row (channel c, row i) in fp32 into dst: noise, then normalisation.
RE_INLINE void final_row(const AugmentArgs& a, const RowView& r, const float* yrow, int c,
                         int64_t i, float noise_std, float* dst, float* z) {
  const int64_t w = a.w;
  const float m = a.mean[c], sd = a.std[c];
  const bool plain = m == 0.f && sd == 1.f;  // (y - 0) / 1 == y
  if (noise_std > 0.f) {
    noise_row(z, w, static_cast<uint64_t>(a.noise_seed[r.v * a.B + r.b]),
              static_cast<uint32_t>(r.v), static_cast<uint32_t>(c), static_cast<uint32_t>(i));
    for (int64_t j = 0; j < w; ++j) dst[j] = (clamp01(yrow[j] + z[j] * noise_std) - m) / sd;
  } else if (plain) {
    std::copy(yrow, yrow + w, dst);
  } else {
    for (int64_t j = 0; j < w; ++j) dst[j] = (yrow[j] - m) / sd;
  }
}

template <typename T>
RE_INLINE void write_view(const AugmentArgs& a, const RowView& r, Scratch& s, int Cu) {
  const int64_t C = a.C, h = a.h, w = a.w, N = h * w;
  const float noise_std = r.p[kRowNoiseStd];
  T* out = static_cast<T*>(a.out) + r.v * a.os[0] + r.b * a.os[1];
  const int64_t oc = a.os[2], oi = a.os[3], oj = a.os[4];
  float* z = s.line.data();
  if (oj == 1) {  // rows of w contiguous (NCHW)
    float* dst = s.chan.data();
    for (int64_t c = 0; c < C; ++c) {
      const float* plane = s.y.data() + (Cu == 1 ? 0 : c) * N;
      for (int64_t i = 0; i < h; ++i) {
        final_row(a, r, plane + i * w, static_cast<int>(c), i, noise_std, dst, z);
        T* o = out + c * oc + i * oi;
        for (int64_t j = 0; j < w; ++j) store(o + j, dst[j]);
      }
    }
    return;
  }
  for (int64_t i = 0; i < h; ++i) {  // any other layout, e.g. channels_last
    for (int64_t c = 0; c < C; ++c) {
      const float* plane = s.y.data() + (Cu == 1 ? 0 : c) * N;
      final_row(a, r, plane + i * w, static_cast<int>(c), i, noise_std, s.chan.data() + c * w, z);
    }
    T* o = out + i * oi;
    if (oc == 1 && oj == C) {
      for (int64_t j = 0; j < w; ++j) {
        for (int64_t c = 0; c < C; ++c) store(o + j * C + c, s.chan[c * w + j]);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t j = 0; j < w; ++j) store(o + c * oc + j * oj, s.chan[c * w + j]);
      }
    }
  }
}

// ---------------------------------------------------------------------------- one view

template <bool kFma, typename T>
RE_INLINE void process_row_impl(const AugmentArgs& a, const RowView& r, Scratch& s) {
  const int Cu = a.rgb ? 3 : (a.gray ? 1 : static_cast<int>(a.C));
  const int64_t h = a.h, w = a.w, N = h * w;
  if (a.rgb) {
    sample_view<kFma, uint8_t>(a, r, s, Cu);
  } else {
    sample_view<kFma, int16_t>(a, r, s, Cu);
  }
  float* y = s.y.data();
  const float* p = r.p;
  // 3. colour jitter: saturation and hue only on 3 distinct channels.
  const bool three = a.C == 3 && Cu == 3;
  const float f[4] = {p[kRowBrightness], p[kRowContrast], p[kRowSaturation], p[kRowHue]};
  const bool active[4] = {f[0] != 1.f, f[1] != 1.f, three && f[2] != 1.f, three && f[3] != 0.f};
  for (int step = 0; step < 4; ++step) {
    const int op = static_cast<int>(p[kRowOrder0 + step]);
    if (op < 0 || op > 3 || !active[op]) continue;
    switch (op) {
      case 0: brightness(y, Cu * N, f[0]); break;
      case 1: contrast(y, N, Cu, f[1]); break;
      case 2: saturation(y, N, f[2]); break;
      default: hue(y, N, f[3]); break;
    }
  }
  // 4-7.
  if (three && p[kRowGrayscale] != 0.f) grayscale(y, N);
  if (p[kRowGamma] != 1.f) gamma_curve(y, Cu * N, p[kRowGamma]);
  if (p[kRowSolarize] != 0.f) solarize(y, Cu * N, p[kRowSolarizeThreshold]);
  if (p[kRowBlurSigma] > 0.f) blur(y, Cu, s, h, w, p[kRowBlurSigma]);
  // 8-9, into the output.
  write_view<T>(a, r, s, Cu);
}

template <typename T>
void process_row_plain(const AugmentArgs& a, const RowView& r, Scratch& s) {
  process_row_impl<false, T>(a, r, s);
}

#if RE_AUGMENT_X86
template <typename T>
RE_TARGET_AVX2_FMA void process_row_fma(const AugmentArgs& a, const RowView& r, Scratch& s) {
  process_row_impl<true, T>(a, r, s);
}

// The same code compiled for AVX-512 (16 lanes): every multiply-add is the explicit one
// of madd<true> (fp-contract is off), so it gives the AVX2 path's bits.
template <typename T>
__attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq,avx512bw"))) void process_row_avx512(
    const AugmentArgs& a, const RowView& r, Scratch& s) {
  process_row_impl<true, T>(a, r, s);
}

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
}

bool cpu_has_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool cpu_has_fma() { return false; }
#endif

// ---------------------------------------------------------------------------- driver

// (min, max) of one input row.
RE_INLINE void row_range(const int16_t* row, int64_t W, int64_t stride, int32_t* lo_out,
                         int32_t* hi_out) {
  int16_t lo = INT16_MAX, hi = INT16_MIN;
  if (stride == 1) {
    for (int64_t k = 0; k < W; ++k) {
      lo = row[k] < lo ? row[k] : lo;
      hi = row[k] > hi ? row[k] : hi;
    }
  } else {
    for (int64_t k = 0; k < W; ++k) {
      lo = row[k * stride] < lo ? row[k * stride] : lo;
      hi = row[k * stride] > hi ? row[k * stride] : hi;
    }
  }
  *lo_out = lo;
  *hi_out = hi;
}

void row_range_plain(const int16_t* row, int64_t W, int64_t stride, int32_t* lo, int32_t* hi) {
  row_range(row, W, stride, lo, hi);
}

#if RE_AUGMENT_X86
RE_TARGET_AVX2_FMA void row_range_avx2(const int16_t* row, int64_t W, int64_t stride,
                                       int32_t* lo, int32_t* hi) {
  row_range(row, W, stride, lo, hi);
}
#endif

// Each slice's (min, max) HU, over all its pixels.
std::vector<float> slice_ranges(const AugmentArgs& a, int num_threads) {
  const int64_t B = a.B, H = a.H, W = a.W;
  const int16_t* x = static_cast<const int16_t*>(a.x);
  auto fn = &row_range_plain;
#if RE_AUGMENT_X86
  if (cpu_has_fma()) fn = &row_range_avx2;
#endif
  std::vector<int32_t> row_min(B * H), row_max(B * H);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t rr = 0; rr < B * H; ++rr) {
    fn(x + (rr / H) * a.xs[0] + (rr % H) * a.xs[1], W, a.xs[2], &row_min[rr], &row_max[rr]);
  }
  std::vector<float> ranges(2 * B);
  for (int64_t b = 0; b < B; ++b) {
    ranges[2 * b] = static_cast<float>(
        *std::min_element(row_min.begin() + b * H, row_min.begin() + (b + 1) * H));
    ranges[2 * b + 1] = static_cast<float>(
        *std::max_element(row_max.begin() + b * H, row_max.begin() + (b + 1) * H));
  }
  return ranges;
}

template <typename T>
void run(const AugmentArgs& a, int num_threads) {
  using RowFn = void (*)(const AugmentArgs&, const RowView&, Scratch&);
  RowFn fn = &process_row_plain<T>;
#if RE_AUGMENT_X86
  if (cpu_has_fma()) fn = &process_row_fma<T>;
  if (cpu_has_fma() && cpu_has_avx512()) fn = &process_row_avx512<T>;
#endif
  std::vector<float> ranges;
  if (!a.rgb && a.minmax) ranges = slice_ranges(a, num_threads);
  const int64_t V = a.V, B = a.B, rows = V * B;
  const int Cu = a.rgb ? 3 : (a.gray ? 1 : static_cast<int>(a.C));
  const int64_t out_elems = V * B * a.C * a.h * a.w;
  if (out_elems > 0) advise_huge_pages(a.out, static_cast<size_t>(out_elems) * sizeof(T));
  bool failed = false;
  std::string error;
#pragma omp parallel num_threads(num_threads)
  {
    Scratch s;
    s.reserve(Cu, a.C, a.h, a.w, a.rgb ? 3 : 1);
    // Sample-major order: the views of one slice run back to back (the slice stays in cache).
#pragma omp for schedule(dynamic, 1)
    for (int64_t n = 0; n < rows; ++n) {
      const int64_t b = n / V, v = n % V;
      const int64_t row = v * B + b;
      RowView r{a.rows + row * kAugmentRowFields,
                a.windows ? a.windows + row * a.C * 2 : nullptr,
                v,
                b,
                ranges.empty() ? 0.f : ranges[2 * b],
                ranges.empty() ? 0.f : ranges[2 * b + 1]};
      try {
        fn(a, r, s);
      } catch (const std::exception& e) {
#pragma omp critical
        {
          failed = true;
          error = e.what();
        }
      }
    }
  }
  if (failed) throw std::invalid_argument(error);
}

}  // namespace

bool augment_uses_fma() { return cpu_has_fma(); }

void augment_views(const AugmentArgs& a, int num_threads) {
  if (a.C < 1 || a.C > kHuWindowMaxChannels || a.h < 1 || a.w < 1 || a.H < 1 || a.W < 1 ||
      a.V < 1 || a.B < 0) {
    throw std::invalid_argument("augment_views: bad sizes");
  }
  if (a.rgb ? a.C != 3 : a.windows == nullptr) {
    throw std::invalid_argument("augment_views: RGB needs C = 3, CT needs windows");
  }
  if (a.B == 0) return;
  num_threads = resolve_threads(num_threads);
  switch (a.dtype) {
    case OutDType::kFloat32:
      run<float>(a, num_threads);
      break;
    case OutDType::kFloat16:
      run<f16_t>(a, num_threads);
      break;
    case OutDType::kBFloat16:
      run<bf16_t>(a, num_threads);
      break;
    default:
      throw std::invalid_argument("augment_views: unknown output dtype code");
  }
}

}  // namespace radengine::cpu
