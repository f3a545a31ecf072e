// Device queries for `radengine info` and backend selection.
#include <cuda_runtime.h>

#include "cuda/launch.h"

namespace radengine::cuda {

int device_count(std::string* error) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (error) *error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error state
    return -1;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int driver_version() {
  int v = 0;
  cudaDriverGetVersion(&v);
  return v;
}

}  // namespace radengine::cuda
