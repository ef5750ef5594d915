// The build report used by `fastvit info`: compiler, OpenMP, SIMD level, CUDA build.
#include <omp.h>

#include <string>

#include "bindings.h"

namespace py = pybind11;

namespace fastvit {
namespace {

// Widest vector instruction set the compiler was allowed to emit for this module.
std::string compiled_simd() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE4_2__)
  return "sse4.2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

// Widest vector instruction set this CPU supports at run time.
std::string cpu_simd() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  if (__builtin_cpu_supports("avx")) return "avx";
  if (__builtin_cpu_supports("sse4.2")) return "sse4.2";
  return "scalar";
#elif defined(__aarch64__)
  return "neon";
#else
  return "unknown";
#endif
}

py::dict build_info() {
  py::dict info;
  info["compiler"] = FASTVIT_CXX_COMPILER;
  info["cxx_standard"] = static_cast<long>(__cplusplus);
  info["openmp"] = static_cast<long>(_OPENMP);
  info["openmp_max_threads"] = omp_get_max_threads();
  info["simd_compiled"] = compiled_simd();
  info["simd_cpu"] = cpu_simd();
  info["cuda"] = FASTVIT_CUDA_INFO;
  return info;
}

// Sum of a float32 buffer with an OpenMP reduction: a tiny real kernel that proves the
// pointer-passing convention (data_ptr + numel from Python) and the thread pool work.
double sum_f32(std::uintptr_t ptr, std::int64_t n) {
  const float* x = reinterpret_cast<const float*>(ptr);
  double total = 0.0;
  py::gil_scoped_release release;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) total += x[i];
  return total;
}

}  // namespace

void bind_build_info(py::module_& m) {
  m.def("build_info", &build_info, "How this module was built: compiler, OpenMP, SIMD level, CUDA build");
  m.def("sum_f32", &sum_f32, py::arg("ptr"), py::arg("n"),
        "Sum of n contiguous float32 values at address ptr (OpenMP reduction, releases the GIL)");
}

}  // namespace fastvit
