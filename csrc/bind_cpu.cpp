// radengine._cpu: CPU kernels on raw pointers. Python (radengine/ops) validates shapes,
// dtypes and devices; these bindings only unpack integers and release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <vector>

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

  m.def("openmp_threads", []() { return omp_get_max_threads(); },
        "threads an OpenMP region uses by default (1 if built without OpenMP)");
}
