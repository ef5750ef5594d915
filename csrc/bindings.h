// Each op folder of csrc/ exposes one bind_<op>() that module.cpp calls.
#pragma once
#include <pybind11/pybind11.h>

namespace fastvit {
void bind_build_info(pybind11::module_& m);
void bind_augment(pybind11::module_& m);
}  // namespace fastvit
