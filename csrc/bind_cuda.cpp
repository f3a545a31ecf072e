// radengine._cuda: CUDA kernels on raw device pointers and a stream (an integer, e.g.
// torch.cuda.current_stream().cuda_stream). Linked against the static CUDA runtime, so it
// imports on machines without a GPU; calls then fail with the runtime's error message.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
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
}
