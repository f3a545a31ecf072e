// resize on the CPU: antialiased bilinear resampling, separable (W pass, then H pass).
//
// Math (as PIL's and torch's antialiased bilinear, align_corners=False): for output index i
// of a side resized from n to m, scale = n / m, center = scale * (i + 0.5), support =
// max(scale, 1); taps j in [int(center - support + 0.5), int(center + support + 0.5)) clipped
// to [0, n), weight(j) = tri((j - center + 0.5) / max(scale, 1)) with tri(t) = max(0, 1 - |t|),
// normalised to sum 1. Integer outputs are rounded half to even and clamped to the dtype.
//
// Memory traffic: each input row read taps_h times (from cache), output written once; one
// fp32 row of W x C per thread. Work: (taps_h * h * W + taps_w * h * w) * C.
#include "cpu/resize.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cpu/memory.h"
#include "cpu/parallel.h"

namespace radengine::cpu {
namespace {

struct Taps {
  int64_t size = 0;              // taps per output index (max over indices)
  std::vector<int64_t> first;    // first input index per output index
  std::vector<int64_t> count;    // taps used per output index
  std::vector<float> weights;    // out_len x size, zero-padded
};

Taps make_taps(int64_t in, int64_t out) {
  Taps t;
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  const double support = scale >= 1.0 ? scale : 1.0;
  const double inv = scale >= 1.0 ? 1.0 / scale : 1.0;
  t.size = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  t.first.resize(out);
  t.count.resize(out);
  t.weights.assign(out * t.size, 0.f);
  for (int64_t i = 0; i < out; ++i) {
    const double center = scale * (i + 0.5);
    const int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in);
    const int64_t n = std::min<int64_t>(hi - lo, t.size);
    double total = 0.0;
    std::vector<double> w(n);
    for (int64_t j = 0; j < n; ++j) {
      const double d = std::abs((j + lo - center + 0.5) * inv);
      w[j] = d < 1.0 ? 1.0 - d : 0.0;
      total += w[j];
    }
    t.first[i] = lo;
    t.count[i] = n;
    for (int64_t j = 0; j < n; ++j) {
      t.weights[i * t.size + j] = static_cast<float>(total > 0.0 ? w[j] / total : 0.0);
    }
  }
  return t;
}

template <typename T>
inline T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    const float lo = static_cast<float>(std::numeric_limits<T>::min());
    const float hi = static_cast<float>(std::numeric_limits<T>::max());
    v = std::min(std::max(v, lo), hi);
    // Round half to even without a libm call (std::nearbyint is one on baseline x86-64,
    // which lacks roundps): adding and subtracting 1.5 * 2^23 leaves the nearest integer
    // under the default rounding mode, exact for |v| < 2^22 (int16 and uint8 ranges).
    // Compilers keep the two operations: without -ffast-math they may not fold them.
    constexpr float kMagic = 12582912.0f;
    return static_cast<T>((v + kMagic) - kMagic);
  }
}

template <typename T>
void run(const T* x, T* out, int64_t B, int64_t H, int64_t W, int64_t C, int64_t h, int64_t w,
         int num_threads) {
  const Taps tw = make_taps(W, w), th = make_taps(H, h);
  advise_huge_pages(out, static_cast<size_t>(B * h * w * C) * sizeof(T));
  const int64_t n = W * C;  // floats in one input row
  // Parallel over (image, block of output rows): a series has few images, each large.
  const int64_t row_blocks = std::max<int64_t>(1, std::min<int64_t>(h, 8));
  const int64_t rows_per_block = (h + row_blocks - 1) / row_blocks;
#pragma omp parallel num_threads(num_threads)
  {
    // The vertical pass first, one output row at a time, into an L1/L2-resident row: it
    // runs along contiguous memory and vectorises; the horizontal gather pass then works
    // on h rows instead of H.
    std::vector<float> row(n);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * row_blocks; ++task) {
      const int64_t b = task / row_blocks, blk = task % row_blocks;
      const int64_t i0 = blk * rows_per_block, i1 = std::min(h, i0 + rows_per_block);
      const T* img = x + b * H * n;
      for (int64_t i = i0; i < i1; ++i) {
        const float* wt = th.weights.data() + i * th.size;
        const T* src = img + th.first[i] * n;
        float* r = row.data();
        const float w0 = wt[0];
        for (int64_t q = 0; q < n; ++q) r[q] = w0 * static_cast<float>(src[q]);
        for (int64_t k = 1; k < th.count[i]; ++k) {
          const T* s = src + k * n;
          const float wk = wt[k];
          for (int64_t q = 0; q < n; ++q) r[q] += wk * static_cast<float>(s[q]);
        }
        T* orow = out + (b * h + i) * w * C;
        for (int64_t j = 0; j < w; ++j) {
          const float* wj = tw.weights.data() + j * tw.size;
          const float* rj = r + tw.first[j] * C;
          const int64_t taps = tw.count[j];
          for (int64_t c = 0; c < C; ++c) {
            float acc = 0.f;
            for (int64_t k = 0; k < taps; ++k) acc += wj[k] * rj[k * C + c];
            orow[j * C + c] = from_float<T>(acc);
          }
        }
      }
    }
  }
}

}  // namespace

void resize(const void* x, void* out, int64_t B, int64_t H, int64_t W, int64_t C, int64_t h,
            int64_t w, OutDType dtype, int num_threads) {
  if (B <= 0 || h <= 0 || w <= 0) return;
  if (H <= 0 || W <= 0 || C <= 0) throw std::invalid_argument("resize: empty input image");
  num_threads = resolve_threads(num_threads);
  switch (dtype) {
    case OutDType::kInt16:
      run(static_cast<const int16_t*>(x), static_cast<int16_t*>(out), B, H, W, C, h, w,
          num_threads);
      break;
    case OutDType::kUInt8:
      run(static_cast<const uint8_t*>(x), static_cast<uint8_t*>(out), B, H, W, C, h, w,
          num_threads);
      break;
    case OutDType::kFloat32:
      run(static_cast<const float*>(x), static_cast<float*>(out), B, H, W, C, h, w,
          num_threads);
      break;
    default:
      throw std::invalid_argument("resize: dtype must be int16, uint8 or float32");
  }
}

}  // namespace radengine::cpu
