// kernel<<<grid, block, dynamic_shared, stream>>>(args...) as a function, so that a file of kernels and
// their host-side launch code compiles both with nvcc and, unchanged, as host C++ on the CUDA runtime's
// host emulation (emulation/cuda_host.h), which runs them on a CPU in the tests.
#pragma once
#include <cstddef>

#if defined(__CUDACC__)
#include <cuda_runtime.h>

namespace fastvit::cuda {
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t dynamic_shared, cudaStream_t stream,
            A&&... args) {
  kernel<<<grid, block, dynamic_shared, stream>>>(static_cast<P>(args)...);
}
}  // namespace fastvit::cuda

#else
#include "emulation/cuda_host.h"

namespace fastvit::cuda {
using fastvit::emulation::launch;
}  // namespace fastvit::cuda

#endif
