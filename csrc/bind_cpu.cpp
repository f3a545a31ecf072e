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
#include "cpu/contrastive_loss.h"
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

  m.def(
      "contrastive_forward",
      [](uintptr_t u, uintptr_t v, uintptr_t extra, int64_t M, int64_t C, int64_t D,
         double inv_t, int64_t col_offset, int64_t half, bool self_mask, bool pos_in_cols,
         bool symmetric, bool is_double, uintptr_t lse, uintptr_t row_loss, int isa,
         int num_threads) {
        radengine::cpu::ContrastiveProblem p;
        p.u = reinterpret_cast<const void*>(u);
        p.v = reinterpret_cast<const void*>(v);
        p.extra = reinterpret_cast<const void*>(extra);
        p.M = M;
        p.C = C;
        p.D = D;
        p.inv_t = inv_t;
        p.col_offset = col_offset;
        p.half = half;
        p.self_mask = self_mask;
        p.pos_in_cols = pos_in_cols;
        p.symmetric = symmetric;
        p.is_double = is_double;
        radengine::cpu::contrastive_forward(p, reinterpret_cast<void*>(lse),
                                            reinterpret_cast<void*>(row_loss), isa, num_threads);
      },
      py::arg("u"), py::arg("v"), py::arg("extra"), py::arg("M"), py::arg("C"), py::arg("D"),
      py::arg("inv_t"), py::arg("col_offset"), py::arg("half"), py::arg("self_mask"),
      py::arg("pos_in_cols"), py::arg("symmetric"), py::arg("is_double"), py::arg("lse"),
      py::arg("row_loss"), py::arg("isa") = 0, py::arg("num_threads") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "NT-Xent / InfoNCE forward (cpu/contrastive_loss.h): rows u (M, D) against columns v "
      "(C, D) (v unused when symmetric: the rows are the columns), contiguous float32 "
      "(float64 if is_double); extra: (M) positive logits or 0. Writes the row statistics "
      "through lse: (2, M) = [lse, log(1 - p_pos)] (the backward's input), and row_loss (M), in "
      "the same dtype. isa: 0 auto, 1 portable, 2 avx2, 3 avx512 (a cap).");
  m.def(
      "contrastive_backward",
      [](double grad, uintptr_t u, uintptr_t v, uintptr_t lse, int64_t M, int64_t C, int64_t D,
         double inv_t, int64_t col_offset, int64_t half, bool self_mask, bool pos_in_cols,
         bool symmetric, bool is_double, uintptr_t grad_u, uintptr_t grad_v, int isa,
         int num_threads) {
        radengine::cpu::ContrastiveProblem p;
        p.u = reinterpret_cast<const void*>(u);
        p.v = reinterpret_cast<const void*>(v);
        p.M = M;
        p.C = C;
        p.D = D;
        p.inv_t = inv_t;
        p.col_offset = col_offset;
        p.half = half;
        p.self_mask = self_mask;
        p.pos_in_cols = pos_in_cols;
        p.symmetric = symmetric;
        p.is_double = is_double;
        radengine::cpu::contrastive_backward(p, grad, reinterpret_cast<const void*>(lse),
                                             reinterpret_cast<void*>(grad_u),
                                             reinterpret_cast<void*>(grad_v), isa, num_threads);
      },
      py::arg("grad"), py::arg("u"), py::arg("v"), py::arg("lse"), py::arg("M"), py::arg("C"),
      py::arg("D"), py::arg("inv_t"), py::arg("col_offset"), py::arg("half"),
      py::arg("self_mask"), py::arg("pos_in_cols"), py::arg("symmetric"), py::arg("is_double"),
      py::arg("grad_u"), py::arg("grad_v"), py::arg("isa") = 0, py::arg("num_threads") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "NT-Xent / InfoNCE backward: grad_u (M, D) = grad * d(mean row loss)/du and, unless "
      "grad_v is 0 (or symmetric), grad_v (C, D) = grad * d/dv; lse is the forward's (2, M) "
      "statistics.");
  m.def("contrastive_isa", &radengine::cpu::contrastive_isa_name, py::arg("isa") = 0,
        "the code path the float32 contrastive kernels take for an isa cap on this CPU: "
        "'avx512', 'avx2' or 'portable'");

  m.def("openmp_threads", []() { return omp_get_max_threads(); },
        "threads an OpenMP region uses by default (1 if built without OpenMP)");
}
