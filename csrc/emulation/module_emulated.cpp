// fastvit._C_emulated: the CUDA kernels of csrc/ compiled unchanged as host C++ on the runtime's host
// emulation (cuda_host.h) and run on the CPU, for the tests: the same entry points as fastvit._C_cuda,
// on host pointers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "augment/multicrop_kernels.cuh"

namespace py = pybind11;

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastvit._C_emulated: ") + what + " failed: " + cudaGetErrorString(err));
  }
}

void multicrop(std::uintptr_t images_ptr, std::uintptr_t image_offsets_ptr, std::uintptr_t image_shapes_ptr,
               std::uintptr_t params_ptr, std::int64_t n_crops, int max_size, std::uintptr_t out_ptr,
               std::uintptr_t out_offsets_ptr, std::int64_t total, bool out_bf16, std::vector<float> mean,
               std::vector<float> std_, int blur_radius, std::uintptr_t workspace_ptr, std::uintptr_t stream) {
  using namespace fastvit::cuda;
  const Norm norm = make_norm(mean, std_, blur_radius);
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

__global__ void count_kernel(int* counter) {
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) ++*counter;
}

// Launches a kernel that counts its blocks with this configuration: the block count, or the launch error.
py::object probe_launch(std::array<unsigned, 3> grid, std::array<unsigned, 3> block, std::size_t dynamic_shared) {
  int counter = 0;
  fastvit::cuda::launch(count_kernel, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]),
                        dynamic_shared, nullptr, &counter);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return py::str(cudaGetErrorString(err));
  return py::int_(counter);
}

}  // namespace

PYBIND11_MODULE(_C_emulated, m) {
  m.doc() = "fastvit's CUDA kernels on the host emulation of the CUDA runtime (tests only; slow)";
  m.def("multicrop", &multicrop, py::arg("images_ptr"), py::arg("image_offsets_ptr"), py::arg("image_shapes_ptr"),
        py::arg("params_ptr"), py::arg("n_crops"), py::arg("max_size"), py::arg("out_ptr"),
        py::arg("out_offsets_ptr"), py::arg("total"), py::arg("out_bf16"), py::arg("mean"), py::arg("std"),
        py::arg("blur_radius"), py::arg("workspace_ptr"), py::arg("stream"),
        "fastvit._C_cuda.multicrop on host pointers");
  m.def("probe_launch", &probe_launch, py::arg("grid"), py::arg("block"), py::arg("dynamic_shared") = 0,
        "Blocks run by a launch of this configuration, or the launch error CUDA would report");
  m.def("static_shared_bytes", &fastvit::emulation::static_shared_bytes,
        "Bytes of all __shared__ variables in this module (bounds each kernel's static shared memory)");
}
