#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define RE_CUDA_CHECK(expr)                                                           \
  do {                                                                                \
    const cudaError_t re_err_ = (expr);                                               \
    if (re_err_ != cudaSuccess) {                                                     \
      throw std::runtime_error(std::string("CUDA error: ") +                          \
                               cudaGetErrorString(re_err_) + " (" #expr ") at " +     \
                               __FILE__ + ":" + std::to_string(__LINE__));            \
    }                                                                                 \
  } while (0)

namespace radengine::cuda {

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// 16-byte vector store of N elements from a 16-byte aligned register array.
template <typename T, int N>
__device__ __forceinline__ void store_16b(T* dst, const T (&vals)[N]) {
  static_assert((N * sizeof(T)) % 16 == 0, "store_16b needs a multiple of 16 bytes");
  const int4* src = reinterpret_cast<const int4*>(vals);
  int4* d = reinterpret_cast<int4*>(dst);
#pragma unroll
  for (int k = 0; k < static_cast<int>(N * sizeof(T) / 16); ++k) d[k] = src[k];
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace radengine::cuda
