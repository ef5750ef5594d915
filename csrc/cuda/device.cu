// Device discovery for fastvit._C_cuda: compiled architectures, visible GPUs, and the guard
// every CUDA op calls before touching the device.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <string>

#include "cuda/cuda_bindings.h"

namespace py = pybind11;

namespace fastvit::cuda {

void require_device() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky error so a later call reports afresh
    throw std::runtime_error(
        std::string("fastvit._C_cuda: this op needs a CUDA GPU, and none is usable here (") +
        (err == cudaSuccess ? "no device found" : cudaGetErrorString(err)) +
        "). Use backend='cpp' or backend='torch' on a CPU machine.");
  }
}

namespace {

py::dict build_info() {
  py::dict info;
  info["archs"] = FASTVIT_CUDA_ARCHS;
  info["nvcc"] = FASTVIT_NVCC_VERSION;
  info["cudart"] = CUDART_VERSION;
  return info;
}

py::list devices() {
  require_device();
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  py::list out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, i), "cudaGetDeviceProperties");
    py::dict d;
    d["name"] = std::string(prop.name);
    d["capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    d["memory_bytes"] = static_cast<unsigned long long>(prop.totalGlobalMem);
    d["sms"] = prop.multiProcessorCount;
    out.append(d);
  }
  return out;
}

}  // namespace

void bind_device(py::module_& m) {
  m.def("build_info", &build_info, "Architectures and toolkit this module was compiled with");
  m.def("devices", &devices, "Visible GPUs (raises RuntimeError when none is usable)");
}

}  // namespace fastvit::cuda
