// augment_views on the CPU (C++17 + OpenMP): V augmented views of a batch of int16 CT
// slices or uint8 RGB images, every step of radengine/ops/augment.py fused per view.
//
// Math (the module docstring of radengine/ops/augment.py is the specification; the kernel
// reproduces reference_augment_views, fp32 throughout), per view v, sample b:
//   1. geometry: output pixel (i, j) -> grid point in [-1, 1]^2, the reference's fp32 ops
//        u = (j + 0.5) / w - 0.5, v = (i + 0.5) / h - 0.5
//        g = (2 centre + 1) / size - 1 + (2 a / size) u + (2 b / size) v
//      with centre = (x0 + cw / 2 - 0.5, y0 + ch / 2 - 0.5), a = (cos cw fx, sin cw fx),
//      b = (-sin ch fy, cos ch fy); |g| > 1 (outside the image) -> 0 after sampling.
//   2. bilinear taps as grid_sample(align_corners=False, padding "border"): source
//      s = (g + 1) size / 2 - 0.5 clamped to [0, size - 1]; each of the 4 taps is windowed
//        CT:  clamp((x - lo_c) / (hi_c - lo_c), 0, 1) (0 when hi_c <= lo_c); min-max mode:
//             lo_c = min + a_c (max - min), hi_c = min + b_c (max - min), per input slice
//        RGB: x / 255
//      then blended nw a + ne b + sw c + se d.
//   3. colour jitter in the row's order (brightness, contrast with the view's mean gray,
//      saturation, hue in the closed form of _adjust_hue), 4. grayscale, 5. gamma,
//   6. solarize, 7. separable Gaussian blur (radius ceil(3 sigma), replicate borders),
//   8. noise: clamp(y + std z), z Box-Muller of the noise_hash words of
//      (noise_seed[v, b], v, c, i, j), 9. out = (y - mean_c) / std_c, rounded once.
//   A CT view whose channels all share one window (``gray``) is computed on one channel and
//   expanded when written (as the reference does).
//
// Rounding: where torch's own CPU kernels fuse a multiply-add (grid_sample's unnormalise
// and its 4-tap blend, compiled with FMA on AVX2/AVX-512 machines), the kernel does too,
// in a code path compiled for AVX2+FMA and picked at run time; everywhere else it rounds
// after every operation like the reference (the file is compiled with fp-contract off).
// The noise's log/cos/sqrt and gamma's pow (as exp(g ln y)) are branch-free fp32 code
// within ~2 ulp that vectorises; the blur weights use libm's expf. torch's own (SLEEF) may
// differ from these by an ulp or two.
// Sums (contrast's mean, in double; the blur, in tap order) are in a different order from
// torch's. Measured against reference_augment_views: fp32 max |diff| ~5e-6 (after
// normalisation by std ~0.22; ~1.5e-6 on [0, 1]), fp16/bf16 within one output ulp.
//
// CT rows of contiguous int16 take an AVX2 path for steps 1-2 (coordinates, two 32-bit
// gathers of (x, x + 1) tap pairs per 8 pixels, window, blend) with the same operations
// (csrc/cpu/augment_avx2.cpp).
//
// Memory traffic aimed for: every output element written once; the input read once per
// view through the bilinear taps (about 4 taps per output pixel, mostly from cache), plus
// one extra pass over each slice in min-max mode for its range. Intermediates live in a
// per-thread fp32 scratch of one view, (C or 1, h, w) plus one (h, w) plane for the blur:
// no batch-sized intermediate exists. Work is split over (sample, view) rows, the views of
// one sample next to each other so that they share the slice in cache.
#pragma once

#include <cstdint>

#include "common/hu_window.h"

namespace radengine::cpu {

// Per (view, sample) row n = v * B + b, the row table holds kAugmentRowFields fp32 values:
enum AugmentRowField : int {
  kRowCropY0 = 0,   // crop box (y0, x0, h, w) in input pixels
  kRowCropX0,
  kRowCropH,
  kRowCropW,
  kRowFlipX,        // -1 for a horizontal flip, else 1
  kRowFlipY,        // -1 for a vertical flip, else 1
  kRowCos,          // cos(deg2rad(angle)), as torch computes it (its bits are used as is)
  kRowSin,          // sin(deg2rad(angle))
  kRowBrightness,   // colour jitter factors; an identity (1, 1, 1, 0) skips its op
  kRowContrast,
  kRowSaturation,
  kRowHue,
  kRowOrder0,       // kRowOrder0 .. kRowOrder0 + 3: the jitter ops in the order applied
  kRowGrayscale = kRowOrder0 + 4,  // 0 / 1
  kRowGamma,        // exponent, 1 = off
  kRowSolarize,     // 0 / 1
  kRowSolarizeThreshold,
  kRowBlurSigma,    // 0 = off
  kRowNoiseStd,     // 0 = off
  kAugmentRowFields
};

struct AugmentArgs {
  const void* x = nullptr;  // int16 (B, H, W) HU, or uint8 (B, H, W, 3) RGB
  int64_t xs[4] = {};       // element strides of x: (b, y, x, channel); channel unused for CT
  bool rgb = false;
  int64_t V = 0, B = 0, H = 0, W = 0;
  int64_t C = 0, h = 0, w = 0;  // output channels and view size
  void* out = nullptr;          // (V, B, C, h, w) of dtype with element strides os
  int64_t os[5] = {};
  OutDType dtype = OutDType::kFloat32;
  const float* rows = nullptr;        // (V * B, kAugmentRowFields)
  const float* windows = nullptr;     // (V * B, C, 2) (lo, hi); null for RGB
  const int64_t* noise_seed = nullptr;  // (V * B)
  const float* mean = nullptr;        // (C)
  const float* std = nullptr;         // (C)
  bool minmax = false;  // windows are fractions of each slice's [min, max]
  bool gray = false;    // CT with every channel on channel 0's window: one channel computed
};

// Throws std::invalid_argument on inconsistent sizes (Python validates everything else).
void augment_views(const AugmentArgs& args, int num_threads);

// Which sampling path runs here: true when the AVX2+FMA build of the row kernel is used.
bool augment_uses_fma();

}  // namespace radengine::cpu
