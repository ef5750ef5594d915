// fastvit._C_cuda.multicrop: the Python entry of the fused multi-crop kernels (multicrop_kernels.cuh).
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "augment/multicrop_kernels.cuh"
#include "cuda/cuda_bindings.h"

namespace py = pybind11;

namespace fastvit::cuda {
namespace {

void multicrop_cuda(std::uintptr_t images_ptr, std::uintptr_t image_offsets_ptr, std::uintptr_t image_shapes_ptr,
                    std::uintptr_t params_ptr, std::int64_t n_crops, int max_size, std::uintptr_t out_ptr,
                    std::uintptr_t out_offsets_ptr, std::int64_t total, bool out_bf16, std::vector<float> mean,
                    std::vector<float> std_, int blur_radius, std::uintptr_t workspace_ptr, std::uintptr_t stream) {
  const Norm norm = make_norm(mean, std_, blur_radius);
  require_device();
  py::gil_scoped_release release;
  check(launch_multicrop(reinterpret_cast<const std::uint8_t*>(images_ptr),
                         reinterpret_cast<const std::int64_t*>(image_offsets_ptr),
                         reinterpret_cast<const std::int64_t*>(image_shapes_ptr),
                         reinterpret_cast<const float*>(params_ptr), n_crops, max_size,
                         reinterpret_cast<void*>(out_ptr), reinterpret_cast<const std::int64_t*>(out_offsets_ptr),
                         total, out_bf16, norm, blur_radius, reinterpret_cast<float*>(workspace_ptr),
                         reinterpret_cast<cudaStream_t>(stream)),
        "multicrop launch");
}

}  // namespace

void bind_augment_cuda(py::module_& m) {
  m.def("multicrop", &multicrop_cuda, py::arg("images_ptr"), py::arg("image_offsets_ptr"),
        py::arg("image_shapes_ptr"), py::arg("params_ptr"), py::arg("n_crops"), py::arg("max_size"),
        py::arg("out_ptr"), py::arg("out_offsets_ptr"), py::arg("total"), py::arg("out_bf16"), py::arg("mean"),
        py::arg("std"), py::arg("blur_radius"), py::arg("workspace_ptr"), py::arg("stream"),
        "All crops of a batch on the GPU (device pointers; see fastvit/data/multicrop.py); two launches on `stream`");
}

}  // namespace fastvit::cuda
