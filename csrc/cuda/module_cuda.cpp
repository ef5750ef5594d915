// fastvit._C_cuda: the CUDA kernels. Importing never needs a GPU (cudart is linked statically
// and finds the driver lazily); every entry point checks for a device first and raises a
// RuntimeError that says what is missing.
#include <pybind11/pybind11.h>

#include "cuda/cuda_bindings.h"

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fastvit CUDA kernels (compiled for " FASTVIT_CUDA_ARCHS ")";
  fastvit::cuda::bind_device(m);
  fastvit::cuda::bind_augment_cuda(m);
}
