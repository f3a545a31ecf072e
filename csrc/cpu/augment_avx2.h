// The AVX2 intrinsics path of augment_views (csrc/cpu/augment_avx2.cpp), in its own
// translation unit: including <immintrin.h> in augment.cpp stopped GCC from vectorising
// some of that file's plain loops (the hue loop ran scalar, 1.7x slower RGB views).
#pragma once

#include <cstdint>

namespace radengine::cpu {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RE_AUGMENT_HAVE_AVX2_ROW 1
// Phases A, B and C of one CT output row (augment.cpp's coords_row<true>, the (x, x + 1)
// int16 pair taps and the windowed blend) for rows of contiguous int16, 8 pixels per step.
// Call only where the CPU has AVX2 and FMA. Returns how many pixels it did (a multiple of
// 8); the caller finishes the row.
int32_t ct_row_avx2(const int16_t* x16, const float* rowx, const float* rowy, float bxv,
                    float byv, float halfW, float halfH, float maxX, float maxY, int32_t xmax,
                    int32_t H1, int32_t sy, int Cu, const float* lo, const float* span,
                    float* y, int64_t plane, int32_t w);
#else
#define RE_AUGMENT_HAVE_AVX2_ROW 0
#endif

}  // namespace radengine::cpu
