// Each CUDA op exposes one bind_<op>() that module_cuda.cpp calls.
#pragma once
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

namespace fastvit::cuda {

// Throws a RuntimeError naming the failed call and CUDA's own message.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastvit._C_cuda: ") + what + " failed: " + cudaGetErrorString(err));
  }
}

// Raises a clear error when no usable GPU is present; call at the top of every CUDA op.
void require_device();

void bind_device(pybind11::module_& m);
void bind_augment_cuda(pybind11::module_& m);

}  // namespace fastvit::cuda
