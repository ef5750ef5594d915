// The multi-crop kernels on the host emulation of the CUDA runtime as a plain executable, for runs under
// AddressSanitizer (tests/data/test_multicrop_emulated.py builds it with -fsanitize=address): every buffer
// the kernels see is its own allocation of the exact size, so a read or write past any of them is reported.
//   multicrop_main DIR: reads DIR/meta.txt ("n_crops max_size total out_bf16 blur_radius m0 m1 m2 s0 s1 s2")
//   and the raw arrays DIR/{images.u8, image_offsets.i64, image_shapes.i64, params.f32, out_offsets.i64};
//   writes DIR/out.bin (float32 or bf16 bits), which starts filled with 0xFF bytes (NaN either way).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "augment/multicrop_kernels.cuh"

namespace {

template <class T>
std::vector<T> read_array(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() % sizeof(T) != 0) throw std::runtime_error(path + ": size is not a multiple of the element");
  std::vector<T> out(bytes.size() / sizeof(T));
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(out.data()));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream meta(dir + "/meta.txt");
  std::int64_t n_crops = 0, total = 0;
  int max_size = 0, out_bf16 = 0, blur_radius = 0;
  std::vector<float> mean(3), std_(3);
  meta >> n_crops >> max_size >> total >> out_bf16 >> blur_radius >> mean[0] >> mean[1] >> mean[2] >> std_[0] >>
      std_[1] >> std_[2];
  if (!meta) {
    std::fprintf(stderr, "%s/meta.txt: expected 11 numbers\n", dir.c_str());
    return 2;
  }
  const auto images = read_array<std::uint8_t>(dir + "/images.u8");
  const auto image_offsets = read_array<std::int64_t>(dir + "/image_offsets.i64");
  const auto image_shapes = read_array<std::int64_t>(dir + "/image_shapes.i64");
  const auto params = read_array<float>(dir + "/params.f32");
  const auto out_offsets = read_array<std::int64_t>(dir + "/out_offsets.i64");
  const std::size_t out_bytes = static_cast<std::size_t>(total) * (out_bf16 ? 2 : 4);
  std::vector<unsigned char> out(out_bytes, 0xFF);
  std::vector<float> workspace(static_cast<std::size_t>(2 * total));
  using namespace fastvit::cuda;
  const cudaError_t err =
      launch_multicrop(images.data(), image_offsets.data(), image_shapes.data(), params.data(), n_crops, max_size,
                       out.data(), out_offsets.data(), total, out_bf16 != 0, make_norm(mean, std_, blur_radius),
                       blur_radius, workspace.data(), nullptr);
  if (err != cudaSuccess) {
    std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(err));
    return 1;
  }
  std::ofstream f(dir + "/out.bin", std::ios::binary);
  f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
  return f ? 0 : 1;
}
