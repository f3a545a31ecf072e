// hu_window: Hounsfield units -> normalised network input, shared by the CPU and CUDA
// kernels so that both compute exactly the same per-pixel function.
//
// For output channel c of image b and pixel value x (int16 HU):
//   y = clamp((x - lo_c) / (hi_c - lo_c), 0, 1)        window [lo_c, hi_c]
//   y = (x - min_b) / (max_b - min_b), 0 if max_b == min_b   per-image min-max mode
//   out = (y - mean_c) / std_c
// computed in fp32 as clamp((x - lo) * inv_width, 0, 1) * out_scale + out_shift.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define RE_HD __host__ __device__ __forceinline__
#else
#define RE_HD inline
#endif

namespace radengine {

// Dtype codes shared with Python (radengine/_native.py: DTYPE_CODES).
enum class OutDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt16 = 3, kUInt8 = 4 };

constexpr int kHuWindowMaxChannels = 16;

// Passed by value to CUDA kernels (fits easily in the 4 KB parameter space).
struct HuWindowParams {
  int channels;
  int per_image_minmax;  // 1: lo/inv_width come from each image's min and max
  float lo[kHuWindowMaxChannels];
  float inv_width[kHuWindowMaxChannels];
  float out_scale[kHuWindowMaxChannels];  // 1 / std
  float out_shift[kHuWindowMaxChannels];  // -mean / std
};

RE_HD float hu_window_value(float x, float lo, float inv_width, float out_scale,
                            float out_shift) {
  float y = (x - lo) * inv_width;
  // Two selects in this order if-convert to max/min, so the CPU loops vectorise.
  y = y > 0.f ? y : 0.f;
  y = y < 1.f ? y : 1.f;
  return y * out_scale + out_shift;
}

// Per-image min-max as (lo, inv_width); a constant image maps to 0.
RE_HD void minmax_window(int32_t vmin, int32_t vmax, float* lo, float* inv_width) {
  *lo = static_cast<float>(vmin);
  *inv_width = vmax > vmin ? 1.f / static_cast<float>(vmax - vmin) : 0.f;
}

inline HuWindowParams make_hu_window_params(const std::vector<float>& lo,
                                            const std::vector<float>& hi,
                                            const std::vector<float>& mean,
                                            const std::vector<float>& std_,
                                            bool per_image_minmax) {
  const size_t c = mean.size();
  if (c == 0 || c > static_cast<size_t>(kHuWindowMaxChannels) || lo.size() != c ||
      hi.size() != c || std_.size() != c) {
    throw std::invalid_argument(
        "hu_window: lo, hi, mean and std must have the same length, 1.." +
        std::to_string(kHuWindowMaxChannels));
  }
  HuWindowParams p{};
  p.channels = static_cast<int>(c);
  p.per_image_minmax = per_image_minmax ? 1 : 0;
  for (size_t i = 0; i < c; ++i) {
    if (!per_image_minmax && !(hi[i] > lo[i])) {
      throw std::invalid_argument("hu_window: each window needs hi > lo");
    }
    if (!(std_[i] > 0.f)) throw std::invalid_argument("hu_window: std must be > 0");
    p.lo[i] = lo[i];
    p.inv_width[i] = per_image_minmax ? 0.f : 1.f / (hi[i] - lo[i]);
    p.out_scale[i] = 1.f / std_[i];
    p.out_shift[i] = -mean[i] / std_[i];
  }
  return p;
}

}  // namespace radengine
