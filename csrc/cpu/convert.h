// Scalar fp32 -> fp16 / bf16 conversion with round-to-nearest-even, written without
// branches so GCC/Clang vectorise the loops that call them (no F16C or AVX512-BF16 needed).
#pragma once

#include <cstdint>
#include <cstring>

namespace radengine::cpu {

struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x0040u) : rounded);
}

inline uint16_t float_to_f16_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal halves: rebias the exponent (127 -> 15) and round the mantissa at bit 13.
  const uint32_t normal = (a + 0xC8000FFFu + ((a >> 13) & 1u)) >> 13;
  // Below 2^-14: adding 0.5f (ulp 2^-24, the fp16 subnormal step) lets the FPU round.
  const uint32_t subnormal = float_bits(bits_float(a) + 0.5f) - 0x3F000000u;
  uint32_t r = a < 0x38800000u ? subnormal : normal;
  r = a >= 0x477FF000u ? 0x7C00u : r;  // >= 65520 rounds to inf
  r = a > 0x7F800000u ? 0x7E00u : r;   // NaN stays NaN
  return static_cast<uint16_t>(sign | r);
}

inline void store(float* p, float v) { *p = v; }
inline void store(f16_t* p, float v) { p->bits = float_to_f16_bits(v); }
inline void store(bf16_t* p, float v) { p->bits = float_to_bf16_bits(v); }

}  // namespace radengine::cpu
