#pragma once

#include <cstdint>

#include "common/hu_window.h"

namespace radengine::cpu {

// x: int16 (B, H, W) with element strides xs; out: (B, C, H, W) with element strides os.
void hu_window(const int16_t* x, void* out, int64_t B, int64_t H, int64_t W,
               const int64_t xs[3], const int64_t os[4], const HuWindowParams& p,
               OutDType dtype, int num_threads);

}  // namespace radengine::cpu
