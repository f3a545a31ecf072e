// Host-side entry points of the CUDA kernels. Plain C++ (no CUDA headers) so that
// bind_cuda.cpp compiles with the host compiler; streams travel as integers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/hu_window.h"

namespace radengine::cuda {

// Number of visible devices, or -1 with the runtime's reason in *error.
int device_count(std::string* error);
int runtime_version();
int driver_version();

// x: contiguous int16 (B, H*W) on `device`; out: (B, C, H, W) contiguous, or channels_last
// when nhwc. ranges: int32 workspace of 2*B elements, used in per-image min-max mode.
void hu_window(const int16_t* x, void* out, int32_t* ranges, int64_t B, int64_t HW,
               bool nhwc, const HuWindowParams& p, OutDType dtype, int device,
               uintptr_t stream);

// augment_views (csrc/cuda/augment.cu): every pointer is device memory on `device`; the
// tables are those of csrc/cpu/augment.h (rows: kAugmentRowFields floats per row).
struct AugmentViewsArgs {
  const void* x = nullptr;  // int16 (B, H, W) HU, or uint8 (B, H, W, 3) RGB
  int64_t xs[4] = {};       // element strides of x: (b, y, x, channel); channel unused for CT
  bool rgb = false;
  int64_t V = 0, B = 0, H = 0, W = 0;
  int64_t C = 0, h = 0, w = 0;  // output channels and view size
  void* out = nullptr;          // (V, B, C, h, w) of dtype with element strides os
  int64_t os[5] = {};
  OutDType dtype = OutDType::kFloat32;
  const float* rows = nullptr;          // (V * B, kAugmentRowFields), cos/sin torch's CUDA ones
  const float* windows = nullptr;       // (V * B, C, 2) (lo, hi); null for RGB
  const int64_t* noise_seed = nullptr;  // (V * B)
  const int32_t* blur_slot = nullptr;   // (V * B): index among the blurred rows, -1 = none
  const int32_t* blur_rows = nullptr;   // (n_blur): the row of each blurred row's slot
  int64_t n_blur = 0;                   // rows with blur_sigma > 0
  int blur_radius = 0;                  // max ceil(3 sigma) over them (<= 64)
  float mean[kHuWindowMaxChannels] = {};  // normalisation, per output channel
  float std[kHuWindowMaxChannels] = {};
  bool minmax = false;        // windows are fractions of each slice's [min, max]
  bool gray = false;          // CT with every channel on channel 0's window: one computed
  bool contrast = false;      // some row's contrast factor is not 1 (needs its view's mean)
  bool mask_outside = false;  // some row is rotated: points outside the image give 0
};

// Bytes of device workspace augment_views needs (0 possible): slice ranges, contrast
// partial sums, the fp32 scratch of the blurred views. Depends on rgb, V, B, H, W, C, h, w,
// minmax, gray, contrast and n_blur only.
size_t augment_views_workspace(const AugmentViewsArgs& a);

// Enqueues the kernels on `stream`. Throws std::invalid_argument on inconsistent arguments,
// std::runtime_error on a CUDA error (e.g. no GPU).
void augment_views(const AugmentViewsArgs& a, void* workspace, size_t workspace_bytes,
                   int device, uintptr_t stream);

}  // namespace radengine::cuda
