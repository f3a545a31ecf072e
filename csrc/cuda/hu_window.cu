// hu_window on CUDA. Math: csrc/common/hu_window.h (shared with the CPU kernel).
//
// Memory traffic aimed for: each int16 read once with 16-byte loads (8 pixels a thread),
// each output written once with 16-byte stores, so the kernel runs at copy bandwidth:
// 256x512x512 -> 3 bf16 channels moves 134 MB + 403 MB. Min-max mode adds one read pass
// (image_range_kernel) for the per-image range. Channel counts 1-4 are compile-time so
// the NHWC (channels_last) tile of 8 pixels x C channels is one contiguous vector store;
// other shapes (H*W not a multiple of 8, unaligned pointers, C > 4) take a scalar kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>

#include "cuda/check.cuh"
#include "cuda/launch.h"

namespace radengine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // int16 pixels per 16-byte load

template <typename T>
__device__ __forceinline__ T convert(float v);
template <>
__device__ __forceinline__ float convert<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half convert<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ void warp_minmax(int* lo, int* hi) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    *lo = min(*lo, __shfl_down_sync(0xffffffffu, *lo, off));
    *hi = max(*hi, __shfl_down_sync(0xffffffffu, *hi, off));
  }
}

// ranges[b] = min over image b, ranges[B + b] = max; blockIdx.y is the image. The
// workspace is pre-filled with bytes 0x7F (min slots) and 0x80 (max slots), i.e. with
// int32 values beyond int16's range on the right side.
// One block's share of an image's (min, max), reduced and merged with atomics.
template <bool VEC>
__device__ void image_range_block(const int16_t* __restrict__ img, int64_t HW,
                                  int32_t* __restrict__ vmin, int32_t* __restrict__ vmax) {
  int lo = INT_MAX, hi = INT_MIN;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    for (int64_t v = first; v < HW / kVec; v += stride) {
      const int4 raw = reinterpret_cast<const int4*>(img)[v];
      const int16_t* px = reinterpret_cast<const int16_t*>(&raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        lo = min(lo, static_cast<int>(px[k]));
        hi = max(hi, static_cast<int>(px[k]));
      }
    }
  } else {
    for (int64_t i = first; i < HW; i += stride) {
      lo = min(lo, static_cast<int>(img[i]));
      hi = max(hi, static_cast<int>(img[i]));
    }
  }
  warp_minmax(&lo, &hi);
  __shared__ int s_lo[kThreads / 32], s_hi[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    s_lo[warp] = lo;
    s_hi[warp] = hi;
  }
  __syncthreads();
  if (warp == 0) {
    lo = lane < kThreads / 32 ? s_lo[lane] : INT_MAX;
    hi = lane < kThreads / 32 ? s_hi[lane] : INT_MIN;
    warp_minmax(&lo, &hi);
    if (lane == 0) {
      atomicMin(vmin, lo);
      atomicMax(vmax, hi);
    }
  }
  __syncthreads();  // s_lo/s_hi are reused by the block's next image
}

// ranges[b] = min over image b, ranges[B + b] = max. The workspace is pre-filled with
// bytes 0x7F (min slots) and 0x80 (max slots): int32 values beyond int16's range on the
// right side of each.
template <bool VEC>
__global__ void image_range_kernel(const int16_t* __restrict__ x, int64_t HW,
                                   int32_t* __restrict__ ranges, int64_t B) {
  // gridDim.y is capped at 65535, so blocks walk the images in strides of gridDim.y.
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    image_range_block<VEC>(x + b * HW, HW, ranges + b, ranges + B + b);
  }
}

template <int NC>
__device__ __forceinline__ void channel_windows(const HuWindowParams& p, const int32_t* ranges,
                                                int64_t B, int64_t b, float (&lo)[NC],
                                                float (&inv)[NC]) {
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    if (p.per_image_minmax) {
      minmax_window(ranges[b], ranges[B + b], &lo[c], &inv[c]);
    } else {
      lo[c] = p.lo[c];
      inv[c] = p.inv_width[c];
    }
  }
}

// 8 pixels per thread; requires H*W % 8 == 0 and 16-byte aligned x and out.
template <typename T, int NC, bool NHWC>
__global__ void __launch_bounds__(kThreads)
    hu_window_vec_kernel(const int16_t* __restrict__ x, T* __restrict__ out, int64_t n_vec,
                         int64_t HW, const HuWindowParams p, const int32_t* __restrict__ ranges,
                         int64_t B) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec;
       v += stride) {
    const int64_t i = v * kVec;
    const int64_t b = i / HW, hw = i - b * HW;
    const int4 raw = reinterpret_cast<const int4*>(x)[v];
    const int16_t* px = reinterpret_cast<const int16_t*>(&raw);
    float lo[NC], inv[NC];
    channel_windows<NC>(p, ranges, B, b, lo, inv);
    if constexpr (NHWC) {
      alignas(16) T vals[kVec * NC];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          vals[k * NC + c] = convert<T>(hu_window_value(static_cast<float>(px[k]), lo[c],
                                                        inv[c], p.out_scale[c],
                                                        p.out_shift[c]));
        }
      }
      store_16b(out + i * NC, vals);
    } else {
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        alignas(16) T vals[kVec];
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          vals[k] = convert<T>(hu_window_value(static_cast<float>(px[k]), lo[c], inv[c],
                                               p.out_scale[c], p.out_shift[c]));
        }
        store_16b(out + (b * NC + c) * HW + hw, vals);
      }
    }
  }
}

// Any channel count, any H*W, any alignment: one pixel per thread.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    hu_window_scalar_kernel(const int16_t* __restrict__ x, T* __restrict__ out, int64_t n,
                            int64_t HW, const HuWindowParams p,
                            const int32_t* __restrict__ ranges, int64_t B, bool nhwc) {
  const int C = p.channels;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t b = i / HW, hw = i - b * HW;
    const float v = static_cast<float>(x[i]);
    for (int c = 0; c < C; ++c) {
      float lo = p.lo[c], inv = p.inv_width[c];
      if (p.per_image_minmax) minmax_window(ranges[b], ranges[B + b], &lo, &inv);
      const int64_t o = nhwc ? i * C + c : (b * C + c) * HW + hw;
      out[o] = convert<T>(hu_window_value(v, lo, inv, p.out_scale[c], p.out_shift[c]));
    }
  }
}

unsigned grid_for(int64_t work_items) {
  const int64_t blocks = (work_items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < (1 << 30) ? (blocks > 0 ? blocks : 1) : (1 << 30));
}

template <typename T, int NC>
void launch_vec(const int16_t* x, T* out, int64_t n_vec, int64_t HW, bool nhwc,
                const HuWindowParams& p, const int32_t* ranges, int64_t B, cudaStream_t s) {
  if (nhwc) {
    hu_window_vec_kernel<T, NC, true><<<grid_for(n_vec), kThreads, 0, s>>>(x, out, n_vec, HW,
                                                                             p, ranges, B);
  } else {
    hu_window_vec_kernel<T, NC, false><<<grid_for(n_vec), kThreads, 0, s>>>(x, out, n_vec, HW,
                                                                              p, ranges, B);
  }
}

template <typename T>
void launch(const int16_t* x, T* out, int64_t B, int64_t HW, bool nhwc,
            const HuWindowParams& p, const int32_t* ranges, cudaStream_t s) {
  const int64_t n = B * HW;
  const bool vec = HW % kVec == 0 && aligned16(x) && aligned16(out) && p.channels <= 4;
  if (!vec) {
    hu_window_scalar_kernel<T><<<grid_for(n), kThreads, 0, s>>>(x, out, n, HW, p, ranges, B,
                                                                 nhwc);
    return;
  }
  const int64_t n_vec = n / kVec;
  switch (p.channels) {
    case 1: launch_vec<T, 1>(x, out, n_vec, HW, nhwc, p, ranges, B, s); break;
    case 2: launch_vec<T, 2>(x, out, n_vec, HW, nhwc, p, ranges, B, s); break;
    case 3: launch_vec<T, 3>(x, out, n_vec, HW, nhwc, p, ranges, B, s); break;
    default: launch_vec<T, 4>(x, out, n_vec, HW, nhwc, p, ranges, B, s); break;  // C == 4
  }
}

}  // namespace

void hu_window(const int16_t* x, void* out, int32_t* ranges, int64_t B, int64_t HW, bool nhwc,
               const HuWindowParams& p, OutDType dtype, int device, uintptr_t stream) {
  if (B * HW == 0) return;
  RE_CUDA_CHECK(cudaSetDevice(device));
  const cudaStream_t s = as_stream(stream);
  if (p.per_image_minmax) {
    RE_CUDA_CHECK(cudaMemsetAsync(ranges, 0x7F, B * sizeof(int32_t), s));
    RE_CUDA_CHECK(cudaMemsetAsync(ranges + B, 0x80, B * sizeof(int32_t), s));
    const bool vec = HW % kVec == 0 && aligned16(x);
    const int64_t items = vec ? HW / kVec : HW;
    // About 4 loads a thread; blockIdx.y walks the images.
    const dim3 grid(static_cast<unsigned>((items + 4 * kThreads - 1) / (4 * kThreads)),
                    static_cast<unsigned>(B < 65535 ? B : 65535));
    if (vec) {
      image_range_kernel<true><<<grid, kThreads, 0, s>>>(x, HW, ranges, B);
    } else {
      image_range_kernel<false><<<grid, kThreads, 0, s>>>(x, HW, ranges, B);
    }
    RE_CUDA_CHECK(cudaGetLastError());
  }
  switch (dtype) {
    case OutDType::kFloat32:
      launch(x, static_cast<float*>(out), B, HW, nhwc, p, ranges, s);
      break;
    case OutDType::kFloat16:
      launch(x, static_cast<__half*>(out), B, HW, nhwc, p, ranges, s);
      break;
    case OutDType::kBFloat16:
      launch(x, static_cast<__nv_bfloat16*>(out), B, HW, nhwc, p, ranges, s);
      break;
    default:
      throw std::invalid_argument("hu_window: unknown output dtype code");
  }
  RE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace radengine::cuda
