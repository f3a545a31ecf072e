#pragma once

#include <cstdint>

#include "common/hu_window.h"

namespace radengine::cpu {

// x: contiguous (B, H, W, C); out: contiguous (B, h, w, C); same dtype (int16, uint8 or
// float32). Antialiased bilinear (triangle filter widened by the downscale factor).
void resize(const void* x, void* out, int64_t B, int64_t H, int64_t W, int64_t C, int64_t h,
            int64_t w, OutDType dtype, int num_threads);

}  // namespace radengine::cpu
