// Host-side entry points of the CUDA kernels. Plain C++ (no CUDA headers) so that
// bind_cuda.cpp compiles with the host compiler; streams travel as integers.
#pragma once

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

}  // namespace radengine::cuda
