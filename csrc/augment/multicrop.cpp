// Fused multi-crop augmentation on the CPU: every crop of a batch in one call, OpenMP over
// crops. Per crop: antialiased bicubic random-resized-crop (separable, vertical pass then
// horizontal) -> flip -> colour jitter (ops in the table's order) -> grayscale -> Gaussian blur
// (reflect padding) -> solarize -> (x - mean) / std -> float32 or bf16 CHW.
#include <omp.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "augment/pixel_math.h"
#include "bindings.h"

namespace py = pybind11;

namespace fastvit {
namespace augment {
namespace {

struct Taps {
  std::vector<int> lo, hi;    // (S,) first and one-past-last input index
  std::vector<float> weight;  // (S, max_taps) normalised weights
  int max_taps = 0;
};

// Normalised resampling taps for all n_out outputs of one axis.
void build_taps(float start, float len, int n_out, int n_in, Taps* t) {
  t->lo.resize(n_out);
  t->hi.resize(n_out);
  float stretch = 1.f, center = 0.f;
  t->max_taps = 0;
  for (int i = 0; i < n_out; ++i) {
    resample_taps(i, start, len, n_out, n_in, &t->lo[i], &t->hi[i], &center, &stretch);
    t->max_taps = std::max(t->max_taps, t->hi[i] - t->lo[i]);
  }
  t->weight.assign(static_cast<size_t>(n_out) * t->max_taps, 0.f);
  for (int i = 0; i < n_out; ++i) {
    resample_taps(i, start, len, n_out, n_in, &t->lo[i], &t->hi[i], &center, &stretch);
    float* w = &t->weight[static_cast<size_t>(i) * t->max_taps];
    float total = 0.f;
    for (int j = t->lo[i]; j < t->hi[i]; ++j) total += (w[j - t->lo[i]] = tap_weight(j, center, stretch));
    for (int j = 0; j < t->hi[i] - t->lo[i]; ++j) w[j] /= total;
  }
}

struct Scratch {
  Taps tx, ty;
  std::vector<float> a, b, buf, row;
};

// Resample the crop box of one HWC uint8 image into planar buf_CSS (values in [0, 1]). Both passes
// run as "weighted sums of contiguous rows" so the inner loops vectorise:
//   vertical:   a (S, cols, 3) = sum over row taps of the image rows (uint8 -> float);
//   transpose:  b (cols, S, 3);
//   horizontal: out (S, S, 3) [ox][oy] = sum over column taps of the rows of b.
void resample_crop(const std::uint8_t* img_HWC, int H, int W, const float* p, int S, Scratch* sc, float* buf_CSS) {
  build_taps(p[kX0], p[kW], S, W, &sc->tx);
  build_taps(p[kY0], p[kH], S, H, &sc->ty);
  const int c0 = sc->tx.lo[0], c1 = sc->tx.hi[S - 1], cols = c1 - c0;
  const std::int64_t n_row = static_cast<std::int64_t>(cols) * 3;
  sc->a.assign(static_cast<size_t>(S) * n_row, 0.f);
  for (int oy = 0; oy < S; ++oy) {
    float* acc = sc->a.data() + oy * n_row;
    const float* w = &sc->ty.weight[static_cast<size_t>(oy) * sc->ty.max_taps];
    for (int k = sc->ty.lo[oy]; k < sc->ty.hi[oy]; ++k) {
      const float wk = w[k - sc->ty.lo[oy]];
      const std::uint8_t* src = img_HWC + (static_cast<std::int64_t>(k) * W + c0) * 3;
      for (std::int64_t i = 0; i < n_row; ++i) acc[i] += wk * static_cast<float>(src[i]);
    }
  }
  const std::int64_t n_col = static_cast<std::int64_t>(S) * 3;
  sc->b.resize(static_cast<size_t>(cols) * n_col);
  for (int oy = 0; oy < S; ++oy) {
    for (int x = 0; x < cols; ++x) {
      for (int c = 0; c < 3; ++c) sc->b[x * n_col + oy * 3 + c] = sc->a[oy * n_row + x * 3 + c];
    }
  }
  sc->row.resize(n_col);
  const bool flip = p[kFlip] != 0.f;
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  for (int ox = 0; ox < S; ++ox) {
    float* acc = sc->row.data();
    std::fill(acc, acc + n_col, 0.f);
    const float* w = &sc->tx.weight[static_cast<size_t>(ox) * sc->tx.max_taps];
    for (int j = sc->tx.lo[ox]; j < sc->tx.hi[ox]; ++j) {
      const float wj = w[j - sc->tx.lo[ox]];
      const float* src = sc->b.data() + (j - c0) * n_col;
      for (std::int64_t i = 0; i < n_col; ++i) acc[i] += wj * src[i];
    }
    const int xo = flip ? S - 1 - ox : ox;
    for (int oy = 0; oy < S; ++oy) {
      for (int c = 0; c < 3; ++c) buf_CSS[c * plane + oy * S + xo] = clamp01(acc[oy * 3 + c] / 255.f);
    }
  }
}

template <int OP>
void color_loop(float factor, float mean, std::int64_t n, float* __restrict__ r, float* __restrict__ g,
                float* __restrict__ b) {
  for (std::int64_t i = 0; i < n; ++i) color_op(OP, factor, mean, &r[i], &g[i], &b[i]);
}

void apply_colors(const float* p, std::int64_t plane, float* buf_CSS) {
  float* __restrict__ r = buf_CSS;
  float* __restrict__ g = buf_CSS + plane;
  float* __restrict__ b = buf_CSS + 2 * plane;
  if (p[kJitter] != 0.f) {
    for (int k = 0; k < 4; ++k) {
      const int op = static_cast<int>(p[kOrder0 + k]);
      const float factor = p[kBrightness + op];
      if (op == kOpBrightness) color_loop<kOpBrightness>(factor, 0.f, plane, r, g, b);
      if (op == kOpSaturation) color_loop<kOpSaturation>(factor, 0.f, plane, r, g, b);
      if (op == kOpHue) color_loop<kOpHue>(factor, 0.f, plane, r, g, b);
      if (op == kOpContrast) {
        double total = 0.0;
        for (std::int64_t i = 0; i < plane; ++i) total += gray(r[i], g[i], b[i]);
        color_loop<kOpContrast>(factor, static_cast<float>(total / static_cast<double>(plane)), plane, r, g, b);
      }
    }
  }
  if (p[kGray] != 0.f) {
    for (std::int64_t i = 0; i < plane; ++i) r[i] = g[i] = b[i] = gray(r[i], g[i], b[i]);
  }
}

// Separable Gaussian blur of each S x S plane in place, through reflect-padded rows so that the
// tap loops run over contiguous memory.
void blur(float sigma, int radius, int S, float* buf_CSS, Scratch* sc) {
  const int taps = 2 * radius + 1;
  float w[65];
  float total = 0.f;
  for (int k = -radius; k <= radius; ++k) total += (w[k + radius] = gauss_tap(k, sigma));
  for (int k = 0; k < taps; ++k) w[k] /= total;
  sc->a.resize(static_cast<size_t>(S) * S);
  sc->row.resize(S + 2 * radius);
  for (int c = 0; c < 3; ++c) {
    float* x = buf_CSS + static_cast<std::int64_t>(c) * S * S;
    for (int y = 0; y < S; ++y) {  // horizontal: x -> a
      float* pad = sc->row.data();
      for (int i = -radius; i < S + radius; ++i) pad[i + radius] = x[y * S + reflect(i, S)];
      float* dst = sc->a.data() + y * S;
      std::fill(dst, dst + S, 0.f);
      for (int k = 0; k < taps; ++k) {
        for (int i = 0; i < S; ++i) dst[i] += w[k] * pad[i + k];
      }
    }
    for (int y = 0; y < S; ++y) {  // vertical: a -> x
      float* dst = x + y * S;
      std::fill(dst, dst + S, 0.f);
      for (int k = 0; k < taps; ++k) {
        const float* src = sc->a.data() + reflect(y + k - radius, S) * S;
        for (int i = 0; i < S; ++i) dst[i] += w[k] * src[i];
      }
    }
  }
}

// Solarize, normalise and store one crop as float32 or bf16 CHW.
void finish(const float* p, std::int64_t plane, const float* mean, const float* std_, const float* buf_CSS,
            bool bf16, void* out) {
  const bool sol = p[kSolarize] != 0.f;
  for (int c = 0; c < 3; ++c) {
    const float m = mean[c], sd = std_[c];
    const float* src = buf_CSS + c * plane;
    if (bf16) {
      std::uint16_t* dst = static_cast<std::uint16_t*>(out) + c * plane;
      for (std::int64_t i = 0; i < plane; ++i) dst[i] = to_bf16(((sol ? solarize(src[i]) : src[i]) - m) / sd);
    } else {
      float* dst = static_cast<float*>(out) + c * plane;
      for (std::int64_t i = 0; i < plane; ++i) dst[i] = ((sol ? solarize(src[i]) : src[i]) - m) / sd;
    }
  }
}

void multicrop_cpu(std::uintptr_t images_ptr, std::uintptr_t image_offsets_ptr, std::uintptr_t image_shapes_ptr,
                   std::int64_t n_images, std::uintptr_t params_ptr, std::int64_t n_crops, std::uintptr_t out_ptr,
                   std::uintptr_t out_offsets_ptr, bool out_bf16, std::vector<float> mean, std::vector<float> std_,
                   int blur_radius, int num_threads) {
  if (mean.size() != 3 || std_.size() != 3) throw std::invalid_argument("multicrop: mean and std need 3 values");
  if (blur_radius < 0 || blur_radius > 32) throw std::invalid_argument("multicrop: blur_radius must be in [0, 32]");
  const auto* images = reinterpret_cast<const std::uint8_t*>(images_ptr);       // packed HWC uint8 images
  const auto* img_off = reinterpret_cast<const std::int64_t*>(image_offsets_ptr);  // (n_images,) byte offsets
  const auto* img_hw = reinterpret_cast<const std::int64_t*>(image_shapes_ptr);    // (n_images, 2) H, W
  const auto* params = reinterpret_cast<const float*>(params_ptr);               // (n_crops, kNumCols)
  const auto* out_off = reinterpret_cast<const std::int64_t*>(out_offsets_ptr);    // (n_crops,) element offsets
  char* out = reinterpret_cast<char*>(out_ptr);                                   // flat f32/bf16 output
  const std::int64_t elem = out_bf16 ? 2 : 4;
  if (num_threads <= 0) num_threads = omp_get_max_threads();
  py::gil_scoped_release release;
#pragma omp parallel num_threads(num_threads)
  {
    Scratch sc;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t c = 0; c < n_crops; ++c) {
      const float* p = params + c * kNumCols;
      const std::int64_t img = static_cast<std::int64_t>(p[kImage]);
      assert(img >= 0 && img < n_images);
      const int H = static_cast<int>(img_hw[2 * img]), W = static_cast<int>(img_hw[2 * img + 1]);
      const int S = static_cast<int>(p[kSize]);
      const std::int64_t plane = static_cast<std::int64_t>(S) * S;
      sc.buf.resize(3 * plane);
      resample_crop(images + img_off[img], H, W, p, S, &sc, sc.buf.data());
      apply_colors(p, plane, sc.buf.data());
      if (p[kSigma] > 0.f) blur(p[kSigma], blur_radius, S, sc.buf.data(), &sc);
      finish(p, plane, mean.data(), std_.data(), sc.buf.data(), out_bf16, out + out_off[c] * elem);
    }
  }
}

}  // namespace
}  // namespace augment

void bind_augment(py::module_& m) {
  m.def("multicrop", &augment::multicrop_cpu, py::arg("images_ptr"), py::arg("image_offsets_ptr"),
        py::arg("image_shapes_ptr"), py::arg("n_images"), py::arg("params_ptr"), py::arg("n_crops"),
        py::arg("out_ptr"), py::arg("out_offsets_ptr"), py::arg("out_bf16"), py::arg("mean"), py::arg("std"),
        py::arg("blur_radius"), py::arg("num_threads"),
        "All crops of a batch in one call (see fastvit/data/multicrop.py); OpenMP over crops, releases the GIL");
}

}  // namespace fastvit
