// augment_views on CUDA: V augmented views of a batch of int16 CT slices or uint8 RGB
// images, steps 1-9 of radengine/ops/augment.py (its module docstring is the specification,
// reference_augment_views the oracle), on raw device pointers and one stream.
//
// Math, per view v, sample b (row n = v B + b) and output pixel (i, j), as csrc/cpu/augment.h
// states it: 1. the grid point of the crop/flip/rotation, 2. bilinear taps, each windowed
// (CT) or scaled by 1/255 (RGB) before the blend, 0 outside the image (rotation only),
// 3. colour jitter in the row's order, 4. grayscale, 5. gamma, 6. solarize, 7. separable
// Gaussian blur with replicate borders, 8. noise clamp(y + std z), z Box-Muller of the
// noise_hash words, 9. (y - mean_c) / std_c, rounded once to the output dtype. A CT view
// whose channels share one window (``gray``) is computed on one channel and expanded at the
// noise. The row table (cpu/augment.h: AugmentRowField) is the CPU kernel's, built by
// radengine/ops/augment.py::_row_table (cos/sin recomputed on the device by torch).
//
// Kernels, in stream order (host code at the bottom):
//   range_partial, range_finish   min-max mode only: each slice's (min, max) HU; per-block
//                                 partials, then one thread per slice (no atomics).
//   contrast_partial, contrast_finish
//                                 only when some row's contrast factor is not 1: the mean
//                                 gray of the view just before contrast (steps 1-3 up to it,
//                                 recomputed), per-block partial sums in double, then one
//                                 block per row adds them in a fixed order: the same bits on
//                                 every run.
//   augment_main                  one block per (row, tile of 1024 output pixels), 4 pixels
//                                 a thread, the row's parameters decoded once into shared
//                                 memory: steps 1-6 in registers; rows without blur then do
//                                 8-9 and store; rows with blur store fp32 into a scratch.
//   blur                          one block per (blurred row, channel plane, 32x32 tile): tile
//                                 + halo (radius <= 64) in shared memory, horizontal then
//                                 vertical pass, then 8-9 and the store.
//
// Rounding. The oracle is reference_augment_views run on CUDA tensors, i.e. torch's CUDA
// kernels: one rounding per torch op, except where a torch kernel fuses (nvcc contracts
// a * b + c into an fma by default):
//   - grid_sample (ATen GridSampler.cuh, align_corners=False, padding "border"): unnormalise
//     ((g + 1) * W - 1) / 2 = fma(g + 1, W, -1) / 2, clip to [0, W - 1], weights
//     nw = (x0 + 1 - ix)(y0 + 1 - iy) etc. (exact differences, rounded products), blend
//     acc = 0; acc += v_nw nw; ... ne, sw, se: an fma each. Taps off the image are skipped
//     there; here they are clamped and carry an exactly zero weight (fma(v, 0, acc) = acc).
//   - the blur's depthwise conv2d (ATen DepthwiseConv2d.cu): acc = 0; acc += w_k x_k in tap
//     order, an fma each.
//   - a division by a Python scalar is a multiply by its float reciprocal (ATen
//     BinaryDivTrueKernel.cu): u = (j + 0.5) * (1/w) - 0.5 (v likewise), RGB x * (1/255).
// Every other operation below is an explicit __fmul_rn/__fadd_rn/__fsub_rn/__fdiv_rn (nvcc
// never contracts those) in the reference's order, and the fused ones are __fmaf_rn. logf,
// cosf, expf, powf and __fsqrt_rn are the CUDA math library's, which torch's unary kernels
// call as well. Not bit-exact by construction: sums (the contrast mean, in double here and a
// fp32 tree in torch; the blur weights' normaliser), the channel mean of C = 2 or C > 3
// distinct windows (torch's per-thread reduction order assumed), and a blur the reference
// runs through cuDNN (one plane only: conv2d with groups = 1). tests/ops/test_augment_cuda.py
// holds it to the reference on the same GPU: fp32 within 1e-5 after normalisation (the
// differences above are ~1e-7 on [0, 1]), fp16/bf16 within one output ulp.
//
// Memory traffic aimed for: each output element written once, coalesced (consecutive
// threads take consecutive pixels of a view row; channels_last stores C consecutive values a
// thread); the input read through the read-only cache by the 4 bilinear taps (neighbouring
// output pixels share lines); plus one pass over each slice in min-max mode, a second
// sampling pass for contrast rows (mostly from L2), and for blurred rows one fp32 write and
// one read of the view (+ halo) in the scratch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/augment.h"  // AugmentRowField: the layout of the row table
#include "cuda/check.cuh"
#include "cuda/launch.h"

namespace radengine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPixelsPerThread = 4;
constexpr int kTilePixels = kThreads * kPixelsPerThread;
constexpr int kMaxC = kHuWindowMaxChannels;
constexpr int kFields = cpu::kAugmentRowFields;
constexpr int kRangeItems = 16;     // int16 pixels a thread reads in range_partial
constexpr int kMaxRangeParts = 64;  // blocks per slice in range_partial
constexpr int kBlurTile = 32;       // blur output tile: kBlurTile x kBlurTile pixels
constexpr int kMaxBlurRadius = 64;  // the CPU kernel's bound (the spec's sigma <= 16: 48)
constexpr int kMaxGridY = 65535;

constexpr float kGrayR = 0.299f, kGrayG = 0.587f, kGrayB = 0.114f;  // torch: float(0.299)...
constexpr float kTwoPi = static_cast<float>(2.0 * 3.14159265358979323846);
constexpr float kInv255 = 1.0f / 255.0f;  // torch's reciprocal of the Python scalar 255.0

// Everything a kernel needs, by value (kernel parameter space).
struct Params {
  const void* x;
  int64_t xsb;            // slice stride (elements)
  int32_t xsy, xsx, xsc;  // in-slice strides (the Python side checks they fit int32)
  int32_t rgb;
  int32_t B, H, W, C, Cu, h, w;
  int64_t N;              // V * B rows
  int32_t tiles;          // kTilePixels tiles per view
  int32_t range_parts;    // range_partial blocks per slice
  void* out;
  int64_t os[5];
  const float* rows;         // (N, kFields)
  const float* windows;      // (N, C, 2)
  const int64_t* seeds;      // (N)
  const int32_t* blur_slot;  // (N): slot in the scratch, -1 = no blur
  const int32_t* blur_rows;  // (n_blur): row of each slot
  int32_t* range_part;       // (B, range_parts, 2)
  float* range;              // (B, 2): min, max
  double* mean_part;         // (N, tiles)
  float* mean;               // (N)
  float* scratch;            // (n_blur, Cu, h, w)
  int64_t blur_planes;       // n_blur * Cu
  int32_t blur_radius;       // max over the blurred rows
  float inv_w, inv_h;        // torch's 1/w, 1/h
  float norm_mean[kMaxC], norm_std[kMaxC];
  int32_t normalise, minmax, mask_outside, three;
};

// One row's decoded parameters, in shared memory (written by thread 0).
struct RowState {
  float c0x, c0y, a2x, a2y, b2x, b2y;  // grid = c0 + a2 u + b2 v
  float lo[kMaxC], span[kMaxC];        // the windows of the computed channels
  float f[4];                          // jitter factors
  int32_t order[4];
  int32_t active;                      // bit k: jitter op k applies
  float contrast_add;                  // (1 - c) * mean
  float hue_shift;                     // 6 d
  int32_t hue_fast;                    // |d| < 1: the branch-free remainder
  int32_t grayscale, solarize, slot;
  float gamma, thr, noise_std;
  uint32_t key[kMaxC];                 // noise_hash key through the channel word
  float norm_mean[kMaxC], norm_std[kMaxC];
  int64_t out_off;                     // v * os0 + b * os1
  int32_t v, b;
};

// ---------------------------------------------------------------------------- scalar ops

template <typename T>
__device__ __forceinline__ T to_out(float v);
template <>
__device__ __forceinline__ float to_out<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half to_out<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float clamp01(float y) {
  y = y > 0.f ? y : 0.f;  // torch.clamp(0, 1) on non-NaN values
  return y < 1.f ? y : 1.f;
}

// Chris Wellons' lowbias32, as _mix32 in augment.py.
__device__ __forceinline__ uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  h ^= h >> 16;
  return h;
}

__device__ __forceinline__ float luma(float r, float g, float b) {
  return __fadd_rn(__fadd_rn(__fmul_rn(r, kGrayR), __fmul_rn(g, kGrayG)), __fmul_rn(b, kGrayB));
}

// torch.remainder(m, 6): fmod, + 6 where negative. kFast for m in (-6, 18): branch-free and
// the same bits (m - 6 and m - 12 are exact whenever they are the remainder).
__device__ __forceinline__ float remainder6(float m, bool fast) {
  if (fast) {
    float r = m >= 6.f ? __fsub_rn(m, 6.f) : m;
    r = r >= 6.f ? __fsub_rn(r, 6.f) : r;
    return r < 0.f ? __fadd_rn(r, 6.f) : r;
  }
  const float r = fmodf(m, 6.f);
  return (r != 0.f && r < 0.f) ? __fadd_rn(r, 6.f) : r;
}

// Deterministic block sum (fixed tree over kThreads slots); every thread gets the total.
__device__ __forceinline__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const double total = red[0];
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------- row setup

// Thread 0 decodes row n into s; the caller synchronises. with_mean: P.mean holds the
// contrast means (not yet in contrast_partial).
__device__ void load_row(const Params& P, int64_t n, RowState& s, bool with_mean) {
  const float* p = P.rows + n * kFields;
  const int32_t v = static_cast<int32_t>(n / P.B);
  const int32_t b = static_cast<int32_t>(n - static_cast<int64_t>(v) * P.B);
  s.v = v;
  s.b = b;
  // Step 1, op for op as _sampling_grid evaluates it on CUDA tensors (cw / 2 is cw * 0.5).
  const float y0 = p[cpu::kRowCropY0], x0 = p[cpu::kRowCropX0];
  const float ch = p[cpu::kRowCropH], cw = p[cpu::kRowCropW];
  const float fx = p[cpu::kRowFlipX], fy = p[cpu::kRowFlipY];
  const float cs = p[cpu::kRowCos], sn = p[cpu::kRowSin];
  const float fW = static_cast<float>(P.W), fH = static_cast<float>(P.H);
  const float cx = __fsub_rn(__fadd_rn(x0, __fmul_rn(cw, 0.5f)), 0.5f);
  const float cy = __fsub_rn(__fadd_rn(y0, __fmul_rn(ch, 0.5f)), 0.5f);
  s.c0x = __fsub_rn(__fdiv_rn(__fadd_rn(__fmul_rn(2.f, cx), 1.f), fW), 1.f);
  s.c0y = __fsub_rn(__fdiv_rn(__fadd_rn(__fmul_rn(2.f, cy), 1.f), fH), 1.f);
  s.a2x = __fdiv_rn(__fmul_rn(2.f, __fmul_rn(__fmul_rn(cs, cw), fx)), fW);
  s.a2y = __fdiv_rn(__fmul_rn(2.f, __fmul_rn(__fmul_rn(sn, cw), fx)), fH);
  s.b2x = __fdiv_rn(__fmul_rn(2.f, __fmul_rn(__fmul_rn(-sn, ch), fy)), fW);
  s.b2y = __fdiv_rn(__fmul_rn(2.f, __fmul_rn(__fmul_rn(cs, ch), fy)), fH);
  // Step 2's windows (_window): lo, span = hi - lo; min-max: fractions of the slice range.
  if (!P.rgb) {
    float lo_img = 0.f, hi_img = 0.f;
    if (P.minmax) {
      lo_img = P.range[2 * b];
      hi_img = P.range[2 * b + 1];
    }
    const float rng = __fsub_rn(hi_img, lo_img);
    const float* win = P.windows + n * P.C * 2;
    for (int c = 0; c < P.Cu; ++c) {
      float lo = win[2 * c], hi = win[2 * c + 1];
      if (P.minmax) {
        lo = __fadd_rn(lo_img, __fmul_rn(lo, rng));
        hi = __fadd_rn(lo_img, __fmul_rn(hi, rng));
      }
      s.lo[c] = lo;
      s.span[c] = __fsub_rn(hi, lo);
    }
  }
  // Step 3: an identity factor skips its op; saturation and hue only on 3 distinct channels.
  for (int k = 0; k < 4; ++k) {
    s.f[k] = p[cpu::kRowBrightness + k];
    s.order[k] = static_cast<int32_t>(p[cpu::kRowOrder0 + k]);
  }
  s.active = (s.f[0] != 1.f ? 1 : 0) | (s.f[1] != 1.f ? 2 : 0) |
             (P.three && s.f[2] != 1.f ? 4 : 0) | (P.three && s.f[3] != 0.f ? 8 : 0);
  s.contrast_add =
      (with_mean && (s.active & 2)) ? __fmul_rn(__fsub_rn(1.f, s.f[1]), P.mean[n]) : 0.f;
  s.hue_shift = __fmul_rn(6.f, s.f[3]);
  s.hue_fast = fabsf(s.f[3]) < 1.f;
  // Steps 4-8.
  s.grayscale = P.three && p[cpu::kRowGrayscale] != 0.f;
  s.gamma = p[cpu::kRowGamma];
  s.solarize = p[cpu::kRowSolarize] != 0.f;
  s.thr = p[cpu::kRowSolarizeThreshold];
  s.noise_std = p[cpu::kRowNoiseStd];
  s.slot = P.blur_slot[n];
  if (s.noise_std > 0.f) {
    const uint64_t seed = static_cast<uint64_t>(P.seeds[n]);
    uint32_t k = mix32(static_cast<uint32_t>(seed) ^ 0x9E3779B9u);
    k = mix32(k ^ static_cast<uint32_t>(seed >> 32));
    k = mix32(k ^ static_cast<uint32_t>(v));
    for (int c = 0; c < P.C; ++c) s.key[c] = mix32(k ^ static_cast<uint32_t>(c));
  }
#pragma unroll
  for (int c = 0; c < kMaxC; ++c) {  // constant indices into the parameter space
    s.norm_mean[c] = P.norm_mean[c];
    s.norm_std[c] = P.norm_std[c];
  }
  s.out_off = static_cast<int64_t>(v) * P.os[0] + static_cast<int64_t>(b) * P.os[1];
}

// ---------------------------------------------------------------------------- steps 1-6

__device__ __forceinline__ float blend(float v00, float v01, float v10, float v11, float nw,
                                       float ne, float sw, float se) {
  return __fmaf_rn(v11, se, __fmaf_rn(v10, sw, __fmaf_rn(v01, ne, __fmul_rn(v00, nw))));
}

__device__ __forceinline__ float windowed(float t, float lo, float span) {
  return clamp01(__fdiv_rn(__fsub_rn(t, lo), span));
}

// Steps 1-2 of output pixel (i, j) into y[0 .. Cu).
template <typename In, int NC>
__device__ __forceinline__ void sample(const Params& P, const RowState& s,
                                       const In* __restrict__ img, int i, int j,
                                       float (&y)[NC]) {
  const float u = __fsub_rn(__fmul_rn(__fadd_rn(static_cast<float>(j), 0.5f), P.inv_w), 0.5f);
  const float vv = __fsub_rn(__fmul_rn(__fadd_rn(static_cast<float>(i), 0.5f), P.inv_h), 0.5f);
  const float gx = __fadd_rn(__fadd_rn(s.c0x, __fmul_rn(s.a2x, u)), __fmul_rn(s.b2x, vv));
  const float gy = __fadd_rn(__fadd_rn(s.c0y, __fmul_rn(s.a2y, u)), __fmul_rn(s.b2y, vv));
  if (P.mask_outside && (fabsf(gx) > 1.f || fabsf(gy) > 1.f)) {
#pragma unroll
    for (int c = 0; c < NC; ++c) y[c] = 0.f;
    return;
  }
  // grid_sample's source index: fma(g + 1, size, -1) / 2, clipped to [0, size - 1].
  float ix = __fmul_rn(__fmaf_rn(__fadd_rn(gx, 1.f), static_cast<float>(P.W), -1.f), 0.5f);
  float iy = __fmul_rn(__fmaf_rn(__fadd_rn(gy, 1.f), static_cast<float>(P.H), -1.f), 0.5f);
  ix = fminf(static_cast<float>(P.W - 1), fmaxf(ix, 0.f));
  iy = fminf(static_cast<float>(P.H - 1), fmaxf(iy, 0.f));
  const int x0 = static_cast<int>(ix), y0 = static_cast<int>(iy);  // floor: both >= 0
  const int x1 = min(x0 + 1, P.W - 1), y1 = min(y0 + 1, P.H - 1);
  const float ex = __fsub_rn(static_cast<float>(x0 + 1), ix);
  const float wx = __fsub_rn(ix, static_cast<float>(x0));
  const float ey = __fsub_rn(static_cast<float>(y0 + 1), iy);
  const float wy = __fsub_rn(iy, static_cast<float>(y0));
  const float nw = __fmul_rn(ex, ey), ne = __fmul_rn(wx, ey);
  const float sw = __fmul_rn(ex, wy), se = __fmul_rn(wx, wy);
  const int32_t r0 = y0 * P.xsy, r1 = y1 * P.xsy, c0 = x0 * P.xsx, c1 = x1 * P.xsx;
  if constexpr (sizeof(In) == 1) {  // RGB: x / 255 as torch's x * (1/255)
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const In* t = img + c * P.xsc;
      const float v00 = __fmul_rn(static_cast<float>(__ldg(t + r0 + c0)), kInv255);
      const float v01 = __fmul_rn(static_cast<float>(__ldg(t + r0 + c1)), kInv255);
      const float v10 = __fmul_rn(static_cast<float>(__ldg(t + r1 + c0)), kInv255);
      const float v11 = __fmul_rn(static_cast<float>(__ldg(t + r1 + c1)), kInv255);
      y[c] = blend(v00, v01, v10, v11, nw, ne, sw, se);
    }
  } else {  // CT: each tap windowed per output channel, then blended
    const float t00 = static_cast<float>(__ldg(img + r0 + c0));
    const float t01 = static_cast<float>(__ldg(img + r0 + c1));
    const float t10 = static_cast<float>(__ldg(img + r1 + c0));
    const float t11 = static_cast<float>(__ldg(img + r1 + c1));
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      if (c >= P.Cu) {
        y[c] = 0.f;  // unused; keeps every register defined
        continue;
      }
      const float lo = s.lo[c], sp = s.span[c];
      y[c] = sp > 0.f ? blend(windowed(t00, lo, sp), windowed(t01, lo, sp),
                              windowed(t10, lo, sp), windowed(t11, lo, sp), nw, ne, sw, se)
                      : 0.f;
    }
  }
}

// gray(y): y for one channel, the luma for 3 distinct channels, else the channel mean as
// torch's CUDA mean over dim 1 (4 per-thread accumulators c mod 4, combined in order, times
// the float factor 1/C).
template <int NC>
__device__ __forceinline__ float gray_of(const Params& P, const float (&y)[NC]) {
  if (P.Cu == 1) return y[0];
  if constexpr (NC >= 3) {
    if (P.three) return luma(y[0], y[1], y[2]);
  }
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    if (c >= P.Cu) break;
    acc[c & 3] = __fadd_rn(acc[c & 3], y[c]);
  }
  const float sum = __fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[1]), acc[2]), acc[3]);
  return __fmul_rn(sum, __fdiv_rn(1.f, static_cast<float>(P.Cu)));
}

template <int NC>
__device__ __forceinline__ void jitter_op(const Params& P, const RowState& s, int op,
                                          float (&y)[NC]) {
  if (op == 0) {  // brightness: clamp(b y)
#pragma unroll
    for (int c = 0; c < NC; ++c) y[c] = clamp01(__fmul_rn(y[c], s.f[0]));
  } else if (op == 1) {  // contrast: clamp(c y + (1 - c) mean)
#pragma unroll
    for (int c = 0; c < NC; ++c) y[c] = clamp01(__fadd_rn(__fmul_rn(y[c], s.f[1]), s.contrast_add));
  } else if constexpr (NC >= 3) {
    if (op == 2) {  // saturation: clamp(s y + (1 - s) gray(y))
      const float g = __fmul_rn(luma(y[0], y[1], y[2]), __fsub_rn(1.f, s.f[2]));
#pragma unroll
      for (int c = 0; c < 3; ++c) y[c] = clamp01(__fadd_rn(__fmul_rn(y[c], s.f[2]), g));
    } else {  // hue: _adjust_hue's closed form
      const float r = y[0], g = y[1], b = y[2];
      const float maxc = fmaxf(fmaxf(r, g), b);
      const float chroma = __fsub_rn(maxc, fminf(fminf(r, g), b));
      const bool is_r = maxc == r, is_g = maxc == g;
      float h6 = is_r ? __fsub_rn(g, b) : (is_g ? __fsub_rn(b, r) : __fsub_rn(r, g));
      h6 = __fadd_rn(__fdiv_rn(h6, chroma > 0.f ? chroma : 1.f),
                     is_r ? 0.f : (is_g ? 2.f : 4.f));
      h6 = __fadd_rn(h6, s.hue_shift);
      const float nk[3] = {5.f, 3.f, 1.f};
#pragma unroll
      for (int c = 0; c < 3; ++c) {
        const float m = remainder6(__fadd_rn(h6, nk[c]), s.hue_fast);
        const float ramp = clamp01(fminf(m, __fsub_rn(4.f, m)));
        y[c] = __fsub_rn(maxc, __fmul_rn(ramp, chroma));
      }
    }
  }
}

// clamp(y ** g, 0, 1) with torch's pow (powf); one out-of-line copy of powf per kernel.
__device__ __noinline__ float gamma_curve(float y, float g) { return clamp01(powf(y, g)); }

// Steps 1-6 of pixel (i, j) into y. kPreContrast: stop where the row's contrast op runs and
// return gray(y) there (the row's contrast must be active).
template <typename In, int NC, bool kPreContrast>
__device__ __forceinline__ float pixel_steps(const Params& P, const RowState& s,
                                             const In* __restrict__ img, int i, int j,
                                             float (&y)[NC]) {
  sample<In, NC>(P, s, img, i, j, y);
  for (int step = 0; step < 4; ++step) {
    const int op = s.order[step];
    if (op < 0 || op > 3 || ((s.active >> op) & 1) == 0) continue;
    if (kPreContrast && op == 1) return gray_of<NC>(P, y);
    jitter_op<NC>(P, s, op, y);
  }
  if constexpr (kPreContrast) return 0.f;  // not reached for a row whose contrast is active
  if constexpr (NC >= 3) {
    if (s.grayscale) {
      const float g = luma(y[0], y[1], y[2]);
      y[0] = g;
      y[1] = g;
      y[2] = g;
    }
  }
  if (s.gamma != 1.f) {
#pragma unroll
    for (int c = 0; c < NC; ++c) y[c] = gamma_curve(y[c], s.gamma);
  }
  if (s.solarize) {
#pragma unroll
    for (int c = 0; c < NC; ++c) y[c] = y[c] >= s.thr ? __fsub_rn(1.f, y[c]) : y[c];
  }
  return 0.f;
}

// ---------------------------------------------------------------------------- steps 8-9

// z of output channel pixel (c, i, j) (key: the row's noise_hash key through c): Box-Muller
// on the top 24 bits of the two words, as _normal_from_hash. Not inlined: one copy of
// logf/cosf (with their slow paths) per kernel instead of one per unrolled channel.
__device__ __noinline__ float noise_z(uint32_t key, int i, int j) {
  const uint32_t k = mix32(key ^ static_cast<uint32_t>(i));
  const uint32_t wa = mix32(k ^ static_cast<uint32_t>(2 * j));
  const uint32_t wb = mix32(k ^ static_cast<uint32_t>(2 * j + 1));
  const float u1 = __fmul_rn(static_cast<float>((wa >> 8) + 1u), 0x1p-24f);  // (0, 1]
  const float u2 = __fmul_rn(static_cast<float>(wb >> 8), 0x1p-24f);         // [0, 1)
  return __fmul_rn(__fsqrt_rn(__fmul_rn(logf(u1), -2.f)), cosf(__fmul_rn(u2, kTwoPi)));
}

// Output channel c of pixel (i, j) from its value after steps 1-7.
template <typename T>
__device__ __forceinline__ void emit(const Params& P, const RowState& s, int c, int i, int j,
                                     float val, T* __restrict__ px) {
  if (s.noise_std > 0.f) {
    val = clamp01(__fadd_rn(val, __fmul_rn(noise_z(s.key[c], i, j), s.noise_std)));
  }
  if (P.normalise) val = __fdiv_rn(__fsub_rn(val, s.norm_mean[c]), s.norm_std[c]);
  px[static_cast<int64_t>(c) * P.os[2]] = to_out<T>(val);
}

template <typename T>
__device__ __forceinline__ T* pixel_ptr(const Params& P, const RowState& s, int i, int j) {
  return static_cast<T*>(P.out) + s.out_off + static_cast<int64_t>(i) * P.os[3] +
         static_cast<int64_t>(j) * P.os[4];
}

// ---------------------------------------------------------------------------- kernels

__global__ void __launch_bounds__(kThreads) range_partial_kernel(const Params P) {
  __shared__ int32_t lo_s[kThreads], hi_s[kThreads];
  const int64_t HW = static_cast<int64_t>(P.H) * P.W;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t dy = stride / P.W, dx = stride % P.W;
  for (int64_t b = blockIdx.y; b < P.B; b += gridDim.y) {
    const int16_t* img = static_cast<const int16_t*>(P.x) + b * P.xsb;
    int32_t lo = INT_MAX, hi = INT_MIN;
    int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    if (q < HW) {
      int64_t yy = q / P.W, xx = q % P.W;
      for (; q < HW; q += stride) {
        const int32_t t = __ldg(img + yy * P.xsy + xx * P.xsx);
        lo = min(lo, t);
        hi = max(hi, t);
        xx += dx;
        yy += dy;
        if (xx >= P.W) {
          xx -= P.W;
          ++yy;
        }
      }
    }
    lo_s[threadIdx.x] = lo;
    hi_s[threadIdx.x] = hi;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (static_cast<int>(threadIdx.x) < s) {
        lo_s[threadIdx.x] = min(lo_s[threadIdx.x], lo_s[threadIdx.x + s]);
        hi_s[threadIdx.x] = max(hi_s[threadIdx.x], hi_s[threadIdx.x + s]);
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      int32_t* part = P.range_part + (b * P.range_parts + blockIdx.x) * 2;
      part[0] = lo_s[0];
      part[1] = hi_s[0];
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads) range_finish_kernel(const Params P) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= P.B) return;
  int32_t lo = INT_MAX, hi = INT_MIN;
  for (int t = 0; t < P.range_parts; ++t) {
    lo = min(lo, P.range_part[(b * P.range_parts + t) * 2]);
    hi = max(hi, P.range_part[(b * P.range_parts + t) * 2 + 1]);
  }
  P.range[2 * b] = static_cast<float>(lo);
  P.range[2 * b + 1] = static_cast<float>(hi);
}

template <typename In, int NC>
__global__ void __launch_bounds__(kThreads) contrast_partial_kernel(const Params P) {
  __shared__ RowState s;
  __shared__ double red[kThreads];
  const int hw = P.h * P.w;
  for (int64_t n = blockIdx.y; n < P.N; n += gridDim.y) {
    if (P.rows[n * kFields + cpu::kRowContrast] == 1.f) continue;  // uniform over the block
    if (threadIdx.x == 0) load_row(P, n, s, false);
    __syncthreads();
    const In* img = static_cast<const In*>(P.x) + static_cast<int64_t>(s.b) * P.xsb;
    double acc = 0.0;
#pragma unroll 1  // the per-pixel code is long: keep one copy (instruction cache)
    for (int k = 0; k < kPixelsPerThread; ++k) {
      const int pix = blockIdx.x * kTilePixels + k * kThreads + threadIdx.x;
      if (pix < hw) {
        const int i = pix / P.w, j = pix - i * P.w;
        float y[NC];
        acc += static_cast<double>(pixel_steps<In, NC, true>(P, s, img, i, j, y));
      }
    }
    const double total = block_sum(acc, red);  // synchronises: s may be rewritten after it
    if (threadIdx.x == 0) P.mean_part[n * P.tiles + blockIdx.x] = total;
  }
}

__global__ void __launch_bounds__(kThreads) contrast_finish_kernel(const Params P) {
  __shared__ double red[kThreads];
  for (int64_t n = blockIdx.x; n < P.N; n += gridDim.x) {
    if (P.rows[n * kFields + cpu::kRowContrast] == 1.f) continue;
    double acc = 0.0;
    for (int t = threadIdx.x; t < P.tiles; t += kThreads) acc += P.mean_part[n * P.tiles + t];
    const double total = block_sum(acc, red);
    if (threadIdx.x == 0) {
      P.mean[n] = static_cast<float>(total / (static_cast<double>(P.h) * P.w));
    }
  }
}

template <typename T, typename In, int NC>
__global__ void __launch_bounds__(kThreads) augment_main_kernel(const Params P) {
  __shared__ RowState s;
  const int hw = P.h * P.w;
  for (int64_t n = blockIdx.y; n < P.N; n += gridDim.y) {
    if (threadIdx.x == 0) load_row(P, n, s, true);
    __syncthreads();
    const In* img = static_cast<const In*>(P.x) + static_cast<int64_t>(s.b) * P.xsb;
#pragma unroll 1  // the per-pixel code is long: keep one copy (instruction cache)
    for (int k = 0; k < kPixelsPerThread; ++k) {
      const int pix = blockIdx.x * kTilePixels + k * kThreads + threadIdx.x;
      if (pix >= hw) break;
      const int i = pix / P.w, j = pix - i * P.w;
      float y[NC];
      pixel_steps<In, NC, false>(P, s, img, i, j, y);
      if (s.slot >= 0) {  // step 7 follows in blur_kernel
        float* dst = P.scratch + static_cast<int64_t>(s.slot) * P.Cu * hw + pix;
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          if (c >= P.Cu) break;
          dst[static_cast<int64_t>(c) * hw] = y[c];
        }
        continue;
      }
      T* px = pixel_ptr<T>(P, s, i, j);
      if constexpr (NC == 1) {
        for (int c = 0; c < P.C; ++c) emit<T>(P, s, c, i, j, y[0], px);
      } else {
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          if (c >= P.C) break;
          emit<T>(P, s, c, i, j, y[c], px);
        }
      }
    }
    __syncthreads();  // s is rewritten for the next row
  }
}

// Step 7 (+ 8-9) of one channel plane of a blurred row, per 32x32 output tile. The weights
// follow _blur: exp(-0.5 (k / sigma)^2) over |k| <= R = ceil(3 sigma), divided by their sum;
// each pass is the depthwise conv's fma chain in tap order over replicate-clamped taps.
template <typename T>
__global__ void __launch_bounds__(kThreads) blur_kernel(const Params P) {
  extern __shared__ __align__(16) unsigned char re_dynamic_smem[];
  __shared__ RowState s;
  __shared__ float wt[2 * kMaxBlurRadius + 1];
  __shared__ float wsum;
  const int hw = P.h * P.w;
  const int tiles_x = (P.w + kBlurTile - 1) / kBlurTile;
  const int tiles_y = (P.h + kBlurTile - 1) / kBlurTile;
  float* tile = reinterpret_cast<float*>(re_dynamic_smem);
  for (int64_t plane = blockIdx.z; plane < P.blur_planes; plane += gridDim.z) {
    const int32_t slot = static_cast<int32_t>(plane / P.Cu);
    const int cu = static_cast<int>(plane - static_cast<int64_t>(slot) * P.Cu);
    const int64_t n = P.blur_rows[slot];
    const float sigma = P.rows[n * kFields + cpu::kRowBlurSigma];
    // ceil(3 sigma) as blur_radius computes it; never above the host's maximum, which
    // sized the shared memory (the host derives both from the same table).
    const int R = min(static_cast<int>(ceilf(__fmul_rn(3.f, sigma))), P.blur_radius);
    const int K = 2 * R + 1;
    if (threadIdx.x == 0) load_row(P, n, s, false);
    for (int k = threadIdx.x; k < K; k += kThreads) {
      const float q = __fdiv_rn(static_cast<float>(k - R), sigma);
      wt[k] = expf(__fmul_rn(-0.5f, __fmul_rn(q, q)));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double sum = 0.0;
      for (int k = 0; k < K; ++k) sum += wt[k];
      wsum = static_cast<float>(sum);
    }
    __syncthreads();
    for (int k = threadIdx.x; k < K; k += kThreads) wt[k] = __fdiv_rn(wt[k], wsum);
    __syncthreads();
    const float* src = P.scratch + plane * hw;
    const int span = kBlurTile + 2 * R;  // the tile and its halo, span x span
    float* mid = tile + span * span;     // horizontal pass: span x kBlurTile
    for (int ty = blockIdx.y; ty < tiles_y; ty += gridDim.y) {
      for (int tx = blockIdx.x; tx < tiles_x; tx += gridDim.x) {
        const int i0 = ty * kBlurTile, j0 = tx * kBlurTile;
        for (int e = threadIdx.x; e < span * span; e += kThreads) {
          const int r = e / span, c = e - r * span;
          const int ii = min(max(i0 - R + r, 0), P.h - 1), jj = min(max(j0 - R + c, 0), P.w - 1);
          tile[e] = src[static_cast<int64_t>(ii) * P.w + jj];
        }
        __syncthreads();
        for (int e = threadIdx.x; e < span * kBlurTile; e += kThreads) {
          const int r = e / kBlurTile, c = e - r * kBlurTile;
          const float* line = tile + r * span + c;
          float acc = __fmul_rn(wt[0], line[0]);
          for (int k = 1; k < K; ++k) acc = __fmaf_rn(wt[k], line[k], acc);
          mid[e] = acc;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < kBlurTile * kBlurTile; e += kThreads) {
          const int r = e / kBlurTile, c = e - r * kBlurTile;
          const int i = i0 + r, j = j0 + c;
          if (i >= P.h || j >= P.w) continue;
          const float* col = mid + r * kBlurTile + c;
          float acc = __fmul_rn(wt[0], col[0]);
          for (int k = 1; k < K; ++k) acc = __fmaf_rn(wt[k], col[k * kBlurTile], acc);
          T* px = pixel_ptr<T>(P, s, i, j);
          if (P.Cu == 1) {
            for (int c2 = 0; c2 < P.C; ++c2) emit<T>(P, s, c2, i, j, acc, px);
          } else {
            emit<T>(P, s, cu, i, j, acc, px);
          }
        }
        __syncthreads();  // tile and mid are reused
      }
    }
  }
}

// ---------------------------------------------------------------------------- host

struct Layout {
  int64_t Cu = 0, tiles = 0, parts = 0;
  size_t range_part = 0, range = 0, mean_part = 0, mean = 0, scratch = 0, total = 0;
};

size_t align256(size_t n) { return (n + 255) & ~static_cast<size_t>(255); }

Layout layout_of(const AugmentViewsArgs& a) {
  Layout l;
  l.Cu = a.rgb ? 3 : (a.gray ? 1 : a.C);
  const int64_t N = a.V * a.B, hw = a.h * a.w;
  l.tiles = (hw + kTilePixels - 1) / kTilePixels;
  const int64_t per_block = static_cast<int64_t>(kThreads) * kRangeItems;
  l.parts = (a.H * a.W + per_block - 1) / per_block;
  l.parts = l.parts < 1 ? 1 : (l.parts > kMaxRangeParts ? kMaxRangeParts : l.parts);
  size_t off = 0;
  auto take = [&off](size_t bytes) {
    const size_t at = off;
    off += align256(bytes);
    return at;
  };
  const bool minmax = a.minmax && !a.rgb;
  l.range_part = take(minmax ? static_cast<size_t>(a.B * l.parts * 2) * sizeof(int32_t) : 0);
  l.range = take(minmax ? static_cast<size_t>(a.B * 2) * sizeof(float) : 0);
  l.mean_part = take(a.contrast ? static_cast<size_t>(N * l.tiles) * sizeof(double) : 0);
  l.mean = take(a.contrast ? static_cast<size_t>(N) * sizeof(float) : 0);
  l.scratch = take(static_cast<size_t>(a.n_blur * l.Cu * hw) * sizeof(float));
  l.total = off;
  return l;
}

void check_args(const AugmentViewsArgs& a) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("augment_views: " + what); };
  if (a.V < 1 || a.B < 0 || a.H < 1 || a.W < 1 || a.h < 1 || a.w < 1) fail("bad sizes");
  if (a.C < 1 || a.C > kMaxC) fail("C must be 1.." + std::to_string(kMaxC));
  if (a.rgb ? a.C != 3 : a.windows == nullptr) fail("RGB needs C = 3, CT needs windows");
  if (a.h * a.w > INT32_MAX - kTilePixels || a.V * a.B > INT32_MAX) fail("view too large");
  if (a.H > INT32_MAX || a.W > INT32_MAX) fail("image too large");
  int64_t extent = (a.H - 1) * a.xs[1] + (a.W - 1) * a.xs[2] + (a.rgb ? 2 * a.xs[3] : 0);
  for (int k = 0; k < 4; ++k) {
    if (a.xs[k] < 0) fail("negative input strides");
  }
  if (extent >= INT32_MAX) fail("in-image offsets must fit int32 (make x contiguous)");
  if (a.n_blur < 0 || a.n_blur > a.V * a.B) fail("bad n_blur");
  if (a.n_blur > 0 && (a.blur_rows == nullptr || a.blur_radius < 0 ||
                       a.blur_radius > kMaxBlurRadius)) {
    fail("blur sigma out of range (radius ceil(3 sigma) must be <= " +
         std::to_string(kMaxBlurRadius) + ")");
  }
  if (a.rows == nullptr || a.noise_seed == nullptr || a.blur_slot == nullptr ||
      a.out == nullptr || a.x == nullptr) {
    fail("null pointer");
  }
  for (int c = 0; c < a.C; ++c) {
    if (!(a.std[c] > 0.f)) fail("std must be > 0");
  }
  if (a.dtype != OutDType::kFloat32 && a.dtype != OutDType::kFloat16 &&
      a.dtype != OutDType::kBFloat16) {
    fail("unknown output dtype code");
  }
}

Params make_params(const AugmentViewsArgs& a, const Layout& l, void* workspace) {
  Params P{};
  P.x = a.x;
  P.xsb = a.xs[0];
  P.xsy = static_cast<int32_t>(a.xs[1]);
  P.xsx = static_cast<int32_t>(a.xs[2]);
  P.xsc = static_cast<int32_t>(a.xs[3]);
  P.rgb = a.rgb;
  P.B = static_cast<int32_t>(a.B);
  P.H = static_cast<int32_t>(a.H);
  P.W = static_cast<int32_t>(a.W);
  P.C = static_cast<int32_t>(a.C);
  P.Cu = static_cast<int32_t>(l.Cu);
  P.h = static_cast<int32_t>(a.h);
  P.w = static_cast<int32_t>(a.w);
  P.N = a.V * a.B;
  P.tiles = static_cast<int32_t>(l.tiles);
  P.range_parts = static_cast<int32_t>(l.parts);
  P.out = a.out;
  for (int k = 0; k < 5; ++k) P.os[k] = a.os[k];
  P.rows = a.rows;
  P.windows = a.windows;
  P.seeds = a.noise_seed;
  P.blur_slot = a.blur_slot;
  P.blur_rows = a.blur_rows;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  P.range_part = reinterpret_cast<int32_t*>(ws + l.range_part);
  P.range = reinterpret_cast<float*>(ws + l.range);
  P.mean_part = reinterpret_cast<double*>(ws + l.mean_part);
  P.mean = reinterpret_cast<float*>(ws + l.mean);
  P.scratch = reinterpret_cast<float*>(ws + l.scratch);
  P.blur_planes = a.n_blur * l.Cu;
  P.blur_radius = a.blur_radius;
  // torch divides by a Python int w as a multiply by its float reciprocal (computed in
  // double and rounded, or in float: the same float for every w < 2^22).
  P.inv_w = static_cast<float>(1.0 / static_cast<double>(a.w));
  P.inv_h = static_cast<float>(1.0 / static_cast<double>(a.h));
  bool normalise = false;
  for (int c = 0; c < kMaxC; ++c) {
    P.norm_mean[c] = c < a.C ? a.mean[c] : 0.f;
    P.norm_std[c] = c < a.C ? a.std[c] : 1.f;
    normalise = normalise || P.norm_mean[c] != 0.f || P.norm_std[c] != 1.f;
  }
  P.normalise = normalise;  // (y - 0) / 1 == y: the reference skips it then
  P.minmax = a.minmax && !a.rgb;
  P.mask_outside = a.mask_outside;
  P.three = a.C == 3 && l.Cu == 3;
  return P;
}

unsigned clamp_grid(int64_t n, int64_t cap) {
  return static_cast<unsigned>(n < 1 ? 1 : (n > cap ? cap : n));
}

// The device guard: run on `device`, restore the caller's current device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    RE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device_) RE_CUDA_CHECK(cudaSetDevice(device_));
  }
  ~DeviceGuard() {
    if (previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = -1;
};

template <typename In, int NC>
void launch_contrast(const Params& P, cudaStream_t s) {
  const dim3 grid(clamp_grid(P.tiles, INT32_MAX), clamp_grid(P.N, kMaxGridY));
  contrast_partial_kernel<In, NC><<<grid, kThreads, 0, s>>>(P);
  RE_CUDA_CHECK(cudaGetLastError());
  contrast_finish_kernel<<<clamp_grid(P.N, kMaxGridY), kThreads, 0, s>>>(P);
  RE_CUDA_CHECK(cudaGetLastError());
}

template <typename T, typename In, int NC>
void launch_rows(const Params& P, bool contrast, cudaStream_t s) {
  if (contrast) launch_contrast<In, NC>(P, s);
  const dim3 grid(clamp_grid(P.tiles, INT32_MAX), clamp_grid(P.N, kMaxGridY));
  augment_main_kernel<T, In, NC><<<grid, kThreads, 0, s>>>(P);
  RE_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void launch_blur(const Params& P, int device, cudaStream_t s) {
  const int span = kBlurTile + 2 * P.blur_radius;
  const size_t smem = (static_cast<size_t>(span) * span + static_cast<size_t>(span) * kBlurTile) *
                      sizeof(float);
  if (smem > 48 * 1024) {
    int optin = 0;
    RE_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cudaFuncAttributes attr{};
    RE_CUDA_CHECK(cudaFuncGetAttributes(&attr, blur_kernel<T>));
    if (smem + attr.sharedSizeBytes > static_cast<size_t>(optin)) {
      throw std::invalid_argument("augment_views: blur radius " +
                                  std::to_string(P.blur_radius) +
                                  " needs more shared memory than this GPU has");
    }
    RE_CUDA_CHECK(cudaFuncSetAttribute(blur_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  }
  const dim3 grid(clamp_grid((P.w + kBlurTile - 1) / kBlurTile, INT32_MAX),
                  clamp_grid((P.h + kBlurTile - 1) / kBlurTile, kMaxGridY),
                  clamp_grid(P.blur_planes, kMaxGridY));
  blur_kernel<T><<<grid, kThreads, smem, s>>>(P);
  RE_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void run(const Params& P, bool contrast, int device, cudaStream_t s) {
  if (P.rgb) {
    launch_rows<T, uint8_t, 3>(P, contrast, s);
  } else if (P.Cu == 1) {
    launch_rows<T, int16_t, 1>(P, contrast, s);
  } else if (P.Cu <= 3) {
    launch_rows<T, int16_t, 3>(P, contrast, s);
  } else {
    launch_rows<T, int16_t, kMaxC>(P, contrast, s);
  }
  if (P.blur_planes > 0) launch_blur<T>(P, device, s);
}

}  // namespace

size_t augment_views_workspace(const AugmentViewsArgs& a) { return layout_of(a).total; }

void augment_views(const AugmentViewsArgs& a, void* workspace, size_t workspace_bytes,
                   int device, uintptr_t stream) {
  check_args(a);
  if (a.B == 0) return;
  const Layout l = layout_of(a);
  if (workspace_bytes < l.total || (l.total > 0 && workspace == nullptr)) {
    throw std::invalid_argument("augment_views: workspace of " + std::to_string(workspace_bytes) +
                                " bytes, needs " + std::to_string(l.total) +
                                " (augment_views_workspace)");
  }
  const Params P = make_params(a, l, workspace);
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  if (P.minmax) {
    const dim3 grid(static_cast<unsigned>(l.parts), clamp_grid(a.B, kMaxGridY));
    range_partial_kernel<<<grid, kThreads, 0, s>>>(P);
    RE_CUDA_CHECK(cudaGetLastError());
    range_finish_kernel<<<clamp_grid((a.B + kThreads - 1) / kThreads, INT32_MAX), kThreads, 0, s>>>(P);
    RE_CUDA_CHECK(cudaGetLastError());
  }
  switch (a.dtype) {
    case OutDType::kFloat32:
      run<float>(P, a.contrast, device, s);
      break;
    case OutDType::kFloat16:
      run<__half>(P, a.contrast, device, s);
      break;
    default:
      run<__nv_bfloat16>(P, a.contrast, device, s);
      break;
  }
}

}  // namespace radengine::cuda
