// radengine._cuda: CUDA kernels on raw device pointers and a stream (an integer, e.g.
// torch.cuda.current_stream().cuda_stream). Linked against the static CUDA runtime, so it
// imports on machines without a GPU; calls then fail with the runtime's error message.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/launch.h"

namespace py = pybind11;
using radengine::OutDType;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "radengine CUDA kernels on raw device pointers";
  m.attr("max_channels") = radengine::kHuWindowMaxChannels;

  m.def(
      "device_count",
      []() {
        std::string error;
        const int n = radengine::cuda::device_count(&error);
        return std::make_tuple(n, error);
      },
      "(count, error): visible devices, or (-1, the runtime's reason)");
  m.def("runtime_version", &radengine::cuda::runtime_version);
  m.def("driver_version", &radengine::cuda::driver_version);

  m.def(
      "hu_window",
      [](uintptr_t x, uintptr_t out, uintptr_t ranges, int64_t B, int64_t HW, bool nhwc,
         const std::vector<float>& lo, const std::vector<float>& hi,
         const std::vector<float>& mean, const std::vector<float>& std_, bool per_image_minmax,
         int dtype, int device, uintptr_t stream) {
        const auto p = radengine::make_hu_window_params(lo, hi, mean, std_, per_image_minmax);
        radengine::cuda::hu_window(reinterpret_cast<const int16_t*>(x),
                                   reinterpret_cast<void*>(out),
                                   reinterpret_cast<int32_t*>(ranges), B, HW, nhwc, p,
                                   static_cast<OutDType>(dtype), device, stream);
      },
      py::arg("x"), py::arg("out"), py::arg("ranges"), py::arg("B"), py::arg("HW"),
      py::arg("nhwc"), py::arg("lo"), py::arg("hi"), py::arg("mean"), py::arg("std"),
      py::arg("per_image_minmax"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "contiguous int16 (B,H*W) HU -> (B,C,H,W) (or channels_last) fp32/fp16/bf16");

  // augment_views: the sizes and switches that fix the device workspace, shared by both calls.
  auto augment_args = [](bool rgb, int64_t V, int64_t B, int64_t H, int64_t W, int64_t C,
                         int64_t h, int64_t w, bool minmax, bool gray, bool contrast,
                         int64_t n_blur) {
    radengine::cuda::AugmentViewsArgs a;
    a.rgb = rgb;
    a.V = V;
    a.B = B;
    a.H = H;
    a.W = W;
    a.C = C;
    a.h = h;
    a.w = w;
    a.minmax = minmax;
    a.gray = gray;
    a.contrast = contrast;
    a.n_blur = n_blur;
    return a;
  };
  m.def(
      "augment_views_workspace",
      [augment_args](bool rgb, int64_t V, int64_t B, int64_t H, int64_t W, int64_t C, int64_t h,
                     int64_t w, bool minmax, bool gray, bool contrast, int64_t n_blur) {
        return radengine::cuda::augment_views_workspace(
            augment_args(rgb, V, B, H, W, C, h, w, minmax, gray, contrast, n_blur));
      },
      py::arg("rgb"), py::arg("V"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("C"),
      py::arg("h"), py::arg("w"), py::arg("minmax"), py::arg("gray"), py::arg("contrast"),
      py::arg("n_blur"), "bytes of device workspace augment_views needs with these arguments");
  m.def(
      "augment_views",
      [augment_args](uintptr_t x, std::array<int64_t, 4> x_strides, bool rgb, int64_t V,
                     int64_t B, int64_t H, int64_t W, uintptr_t out,
                     std::array<int64_t, 5> out_strides, int64_t C, int64_t h, int64_t w,
                     uintptr_t rows, uintptr_t windows, uintptr_t noise_seed, uintptr_t blur_slot,
                     uintptr_t blur_rows, int64_t n_blur, int blur_radius,
                     const std::vector<float>& mean, const std::vector<float>& std_, bool minmax,
                     bool gray, bool contrast, bool mask_outside, int dtype, uintptr_t workspace,
                     size_t workspace_bytes, int device, uintptr_t stream) {
        if (C < 1 || C > radengine::kHuWindowMaxChannels || mean.size() != static_cast<size_t>(C) ||
            std_.size() != static_cast<size_t>(C)) {
          throw std::invalid_argument(
              "augment_views: C must be 1.." + std::to_string(radengine::kHuWindowMaxChannels) +
              " with one mean and std per channel");
        }
        auto a = augment_args(rgb, V, B, H, W, C, h, w, minmax, gray, contrast, n_blur);
        a.x = reinterpret_cast<const void*>(x);
        std::copy(x_strides.begin(), x_strides.end(), a.xs);
        a.out = reinterpret_cast<void*>(out);
        std::copy(out_strides.begin(), out_strides.end(), a.os);
        a.dtype = static_cast<OutDType>(dtype);
        a.rows = reinterpret_cast<const float*>(rows);
        a.windows = reinterpret_cast<const float*>(windows);
        a.noise_seed = reinterpret_cast<const int64_t*>(noise_seed);
        a.blur_slot = reinterpret_cast<const int32_t*>(blur_slot);
        a.blur_rows = reinterpret_cast<const int32_t*>(blur_rows);
        a.blur_radius = blur_radius;
        std::copy(mean.begin(), mean.end(), a.mean);
        std::copy(std_.begin(), std_.end(), a.std);
        a.mask_outside = mask_outside;
        radengine::cuda::augment_views(a, reinterpret_cast<void*>(workspace), workspace_bytes,
                                       device, stream);
      },
      py::arg("x"), py::arg("x_strides"), py::arg("rgb"), py::arg("V"), py::arg("B"),
      py::arg("H"), py::arg("W"), py::arg("out"), py::arg("out_strides"), py::arg("C"),
      py::arg("h"), py::arg("w"), py::arg("rows"), py::arg("windows"), py::arg("noise_seed"),
      py::arg("blur_slot"), py::arg("blur_rows"), py::arg("n_blur"), py::arg("blur_radius"),
      py::arg("mean"), py::arg("std"), py::arg("minmax"), py::arg("gray"), py::arg("contrast"),
      py::arg("mask_outside"), py::arg("dtype"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>(),
      "V augmented views on the GPU (csrc/cuda/augment.cu): device pointers, element strides, "
      "the cpu kernel's row table; enqueued on `stream`");
}
