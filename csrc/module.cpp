// fastvit._C: the C++/OpenMP kernels. Tensors cross this boundary as raw pointers + shapes
// (no libtorch), so the same module works with any torch build.
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastvit C++/OpenMP kernels";
  fastvit::bind_build_info(m);
  fastvit::bind_augment(m);
}
