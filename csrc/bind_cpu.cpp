// radengine._cpu: CPU kernels on raw pointers. Python (radengine/ops) validates shapes,
// dtypes and devices; these bindings only unpack integers and release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cpu/augment.h"
#include "cpu/hu_window.h"
#include "cpu/parallel.h"
#include "cpu/resize.h"

namespace py = pybind11;
using radengine::OutDType;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "radengine CPU kernels (C++17 + OpenMP) on raw pointers";
  m.attr("max_channels") = radengine::kHuWindowMaxChannels;

  m.def(
      "hu_window",
      [](uintptr_t x, uintptr_t out, int64_t B, int64_t H, int64_t W,
         std::array<int64_t, 3> x_strides, std::array<int64_t, 4> out_strides,
         const std::vector<float>& lo, const std::vector<float>& hi,
         const std::vector<float>& mean, const std::vector<float>& std_, bool per_image_minmax,
         int dtype, int num_threads) {
        const auto p = radengine::make_hu_window_params(lo, hi, mean, std_, per_image_minmax);
        radengine::cpu::hu_window(reinterpret_cast<const int16_t*>(x),
                                  reinterpret_cast<void*>(out), B, H, W, x_strides.data(),
                                  out_strides.data(), p, static_cast<OutDType>(dtype),
                                  num_threads);
      },
      py::arg("x"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"),
      py::arg("x_strides"), py::arg("out_strides"), py::arg("lo"), py::arg("hi"),
      py::arg("mean"), py::arg("std"), py::arg("per_image_minmax"), py::arg("dtype"),
      py::arg("num_threads") = 0, py::call_guard<py::gil_scoped_release>(),
      "int16 (B,H,W) HU -> (B,C,H,W) windowed, normalised fp32/fp16/bf16 (element strides)");

  m.def(
      "resize",
      [](uintptr_t x, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t C, int64_t h,
         int64_t w, int dtype, int num_threads) {
        radengine::cpu::resize(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(out), B,
                               H, W, C, h, w, static_cast<OutDType>(dtype), num_threads);
      },
      py::arg("x"), py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("C"),
      py::arg("h"), py::arg("w"), py::arg("dtype"), py::arg("num_threads") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "contiguous (B,H,W,C) -> (B,h,w,C), antialiased bilinear; int16, uint8 or float32");

  m.def(
      "augment_views",
      [](uintptr_t x, std::array<int64_t, 4> x_strides, bool rgb, int64_t V, int64_t B,
         int64_t H, int64_t W, uintptr_t out, std::array<int64_t, 5> out_strides, int64_t C,
         int64_t h, int64_t w, uintptr_t rows, uintptr_t windows, uintptr_t noise_seed,
         const std::vector<float>& mean, const std::vector<float>& std_, bool minmax,
         bool gray, int dtype, int num_threads) {
        if (mean.size() != static_cast<size_t>(C) || std_.size() != static_cast<size_t>(C)) {
          throw std::invalid_argument("augment_views: mean and std need one value per channel");
        }
        radengine::cpu::AugmentArgs a;
        a.x = reinterpret_cast<const void*>(x);
        std::copy(x_strides.begin(), x_strides.end(), a.xs);
        a.rgb = rgb;
        a.V = V;
        a.B = B;
        a.H = H;
        a.W = W;
        a.out = reinterpret_cast<void*>(out);
        std::copy(out_strides.begin(), out_strides.end(), a.os);
        a.C = C;
        a.h = h;
        a.w = w;
        a.dtype = static_cast<OutDType>(dtype);
        a.rows = reinterpret_cast<const float*>(rows);
        a.windows = reinterpret_cast<const float*>(windows);
        a.noise_seed = reinterpret_cast<const int64_t*>(noise_seed);
        a.mean = mean.data();
        a.std = std_.data();
        a.minmax = minmax;
        a.gray = gray;
        radengine::cpu::augment_views(a, num_threads);
      },
      py::arg("x"), py::arg("x_strides"), py::arg("rgb"), py::arg("V"), py::arg("B"),
      py::arg("H"), py::arg("W"), py::arg("out"), py::arg("out_strides"), py::arg("C"),
      py::arg("h"), py::arg("w"), py::arg("rows"), py::arg("windows"), py::arg("noise_seed"),
      py::arg("mean"), py::arg("std"), py::arg("minmax"), py::arg("gray"), py::arg("dtype"),
      py::arg("num_threads") = 0, py::call_guard<py::gil_scoped_release>(),
      "V augmented views: int16 (B,H,W) HU (x_strides: b, y, x, 0) or uint8 (B,H,W,3) RGB "
      "(b, y, x, channel) -> (V,B,C,h,w) fp32/fp16/bf16 with element strides out_strides. "
      "rows: contiguous float32 (V*B, augment_row_fields) per-row parameter table "
      "(csrc/cpu/augment.h: AugmentRowField); windows: contiguous float32 (V*B, C, 2) "
      "(lo, hi), 0 for RGB; noise_seed: contiguous int64 (V*B); gray: every channel uses "
      "channel 0's window (computed once). Pointers are data_ptr() integers.");
  m.attr("augment_row_fields") = static_cast<int>(radengine::cpu::kAugmentRowFields);
  m.def("augment_uses_fma", &radengine::cpu::augment_uses_fma,
        "whether augment_views samples with the AVX2+FMA code path (as torch's AVX2/AVX-512 "
        "grid_sample rounds)");

  m.def("openmp_threads", []() { return omp_get_max_threads(); },
        "threads an OpenMP region uses by default (1 if built without OpenMP)");
}
