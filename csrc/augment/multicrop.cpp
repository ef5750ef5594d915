// Fused multi-crop augmentation on the CPU: every crop of a batch in one call, OpenMP over
// crops. Per crop: antialiased bicubic random-resized-crop -> flip -> colour jitter (ops in the
// table's order) -> grayscale -> Gaussian blur (reflect padding) -> solarize -> (x - mean) / std
// -> float32 or bf16 CHW.
//
// Every inner loop runs over contiguous floats so that it vectorises:
//   1. vertical resample, kChunk interleaved RGB columns at a time: a (S, kChunk) = weighted sums
//      of the image rows (converted to float once per chunk);
//   2. a -> b (cols * 3, S): transpose, so that row x * 3 + c of b is column x of channel c;
//   3. horizontal resample: weighted sums of the rows of b give the crop TRANSPOSED, t (3, S, S)
//      holding t[c][x][y], the flip folded into the choice of row x. The colour ops and grayscale
//      are per pixel and the blur is the same filter along both axes, so they run on t as is;
//   4. solarize + normalise + store transposes t back into the CHW output, in tiles.
// The colour ops run row by row of t, all ops of a row while it is in L1; contrast needs the crop's
// mean gray after the ops before it, so the ops are split into two passes at contrast.
#include <omp.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "augment/pixel_math.h"
#include "bindings.h"

namespace py = pybind11;

namespace fastvit {
namespace augment {
namespace {

constexpr int kTile = 16;    // columns per tile of the final transposing store
constexpr int kChunk = 256;  // interleaved image columns per vertical pass (its row ring stays in L1)

struct Taps {
  std::vector<int> lo, hi;    // (S,) first and one-past-last input index
  std::vector<float> weight;  // (S, max_taps) normalised weights, times `gain`
  int max_taps = 0;
};

// Normalised resampling taps for all n_out outputs of one axis, each multiplied by gain (positions
// and weights in double, stored as float).
void build_taps(double start, double len, int n_out, int n_in, double gain, Taps* t) {
  t->lo.resize(n_out);
  t->hi.resize(n_out);
  double stretch = 1.0, center = 0.0;
  t->max_taps = 0;
  for (int i = 0; i < n_out; ++i) {
    resample_taps(i, start, len, n_out, n_in, &t->lo[i], &t->hi[i], &center, &stretch);
    t->max_taps = std::max(t->max_taps, t->hi[i] - t->lo[i]);
  }
  t->weight.assign(static_cast<size_t>(n_out) * t->max_taps, 0.f);
  std::vector<double> w(t->max_taps);
  for (int i = 0; i < n_out; ++i) {
    resample_taps(i, start, len, n_out, n_in, &t->lo[i], &t->hi[i], &center, &stretch);
    const int n = t->hi[i] - t->lo[i];
    double total = 0.0;
    for (int k = 0; k < n; ++k) total += (w[k] = tap_weight(t->lo[i] + k, center, stretch));
    float* dst = &t->weight[static_cast<size_t>(i) * t->max_taps];
    for (int k = 0; k < n; ++k) dst[k] = static_cast<float>(w[k] / total * gain);
  }
}

struct Scratch {
  Taps tx, ty;
  std::vector<float> a, b, t, tmp, pad, ring;
  std::vector<int> ring_row;  // image row held by each ring slot, -1: none
  std::vector<const float*> rows_f32;
};

// Eight floats as one GCC/Clang vector (one AVX register, two NEON registers): the tap loops
// below keep 32 outputs in registers, which the auto-vectoriser does not do by itself. Inputs are
// float: GCC 12 scalarises a vector uint8 -> float conversion, so image rows are converted first.
typedef float f32x8 __attribute__((vector_size(32)));
typedef std::int32_t i32x8 __attribute__((vector_size(32)));  // shuffle masks

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof(v)); }

// dst[i] = sum_k w[k] * rows[k][i] for i < n, taps in order, float32 accumulation; blocks of 32
// (then 8) outputs stay in registers across the taps, so a tap costs one load per output.
void weighted_rows(const float* const* rows, const float* w, int n_taps, std::int64_t n, float* __restrict__ dst) {
  std::int64_t i0 = 0;
  for (; i0 + 4 * 8 <= n; i0 += 4 * 8) {
    f32x8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int k = 0; k < n_taps; ++k) {
      const float* src = rows[k] + i0;
      const f32x8 wk = f32x8{} + w[k];
      a0 += wk * load8(src);
      a1 += wk * load8(src + 8);
      a2 += wk * load8(src + 16);
      a3 += wk * load8(src + 24);
    }
    store8(dst + i0, a0);
    store8(dst + i0 + 8, a1);
    store8(dst + i0 + 16, a2);
    store8(dst + i0 + 24, a3);
  }
  for (; i0 + 8 <= n; i0 += 8) {
    f32x8 a0 = {};
    for (int k = 0; k < n_taps; ++k) a0 += (f32x8{} + w[k]) * load8(rows[k] + i0);
    store8(dst + i0, a0);
  }
  for (; i0 < n; ++i0) {
    float acc = 0.f;
    for (int k = 0; k < n_taps; ++k) acc += w[k] * rows[k][i0];
    dst[i0] = acc;
  }
}

// b[j * ldb + i] = a[i * lda + j] for one 8 x 8 block, in registers: three rounds of two-input
// shuffles leave the columns in the order 0 2 1 3 4 6 5 7, undone by the stores.
inline void transpose8x8(const float* a, std::int64_t lda, float* b, std::int64_t ldb) {
  f32x8 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = load8(a + i * lda);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], i32x8{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], i32x8{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      r[i + j] = __builtin_shuffle(t[i + j], t[i + j + 2], i32x8{0, 1, 8, 9, 4, 5, 12, 13});
      r[i + j + 2] = __builtin_shuffle(t[i + j], t[i + j + 2], i32x8{2, 3, 10, 11, 6, 7, 14, 15});
    }
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = __builtin_shuffle(r[j], r[j + 4], i32x8{0, 1, 2, 3, 8, 9, 10, 11});
    t[j + 4] = __builtin_shuffle(r[j], r[j + 4], i32x8{4, 5, 6, 7, 12, 13, 14, 15});
  }
  constexpr int kColumn[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  for (int j = 0; j < 8; ++j) store8(b + kColumn[j] * ldb, t[j]);
}

// a (S, n) -> b (n, S): 8 x 8 register blocks, scalar edges.
void transpose(const float* a, int S, int n, float* b) {
  const int S8 = S / 8 * 8, n8 = n / 8 * 8;
  for (int j = 0; j < n8; j += 8) {
    for (int y = 0; y < S8; y += 8) {
      transpose8x8(a + static_cast<std::int64_t>(y) * n + j, n, b + static_cast<std::int64_t>(j) * S + y, S);
    }
  }
  for (int j = 0; j < n; ++j) {
    const int y0 = j < n8 ? S8 : 0;  // the rows the blocks left out of column j
    for (int y = y0; y < S; ++y) b[static_cast<std::int64_t>(j) * S + y] = a[static_cast<std::int64_t>(y) * n + j];
  }
}

// Vertical pass over n interleaved values of the image rows, starting at row_HWC (the first
// image row's first value): a_YN (S, n). Each image row feeds ~4 consecutive outputs, so its
// float copy lives in a ring of max_taps rows (the tap windows only move down), small enough
// for L1 when n <= kChunk.
void vertical_pass(const std::uint8_t* row_HWC, int W, int S, int n, Scratch* sc, float* a_YN) {
  const Taps& ty = sc->ty;
  const int n_ring = ty.max_taps;
  sc->ring_row.assign(n_ring, -1);
  for (int oy = 0; oy < S; ++oy) {
    const int lo = ty.lo[oy], n_taps = ty.hi[oy] - lo;
    for (int k = 0; k < n_taps; ++k) {
      const int slot = (lo + k) % n_ring;
      float* row = sc->ring.data() + static_cast<std::int64_t>(slot) * n;
      if (sc->ring_row[slot] != lo + k) {
        const std::uint8_t* src = row_HWC + static_cast<std::int64_t>(lo + k) * W * 3;
        for (int i = 0; i < n; ++i) row[i] = static_cast<float>(src[i]);
        sc->ring_row[slot] = lo + k;
      }
      sc->rows_f32[k] = row;
    }
    weighted_rows(sc->rows_f32.data(), &ty.weight[static_cast<size_t>(oy) * ty.max_taps], n_taps, n,
                  a_YN + static_cast<std::int64_t>(oy) * n);
  }
}

// Resample the crop box of one HWC uint8 image into t_CXY (3, S, S) = t[c][x][y] (transposed),
// flip applied, values / 255 (not yet clamped).
void resample_crop(const std::uint8_t* img_HWC, int H, int W, const float* p, int S, Scratch* sc, float* t_CXY) {
  build_taps(p[kX0], p[kW], S, W, 1.0, &sc->tx);
  build_taps(p[kY0], p[kH], S, H, 1.0 / 255.0, &sc->ty);
  const int c0 = sc->tx.lo[0], cols = sc->tx.hi[S - 1] - c0;  // tap ranges grow with the output index
  const int n_row = cols * 3;
  sc->ring.resize(static_cast<size_t>(sc->ty.max_taps) * kChunk);
  sc->rows_f32.resize(std::max(sc->ty.max_taps, sc->tx.max_taps));
  sc->a.resize(static_cast<size_t>(S) * kChunk);
  sc->b.resize(static_cast<size_t>(n_row) * S);
  // 1-2. vertical pass and transpose, kChunk interleaved columns at a time: b (cols * 3, S)
  for (int i0 = 0; i0 < n_row; i0 += kChunk) {
    const int n = std::min(kChunk, n_row - i0);
    vertical_pass(img_HWC + c0 * 3 + i0, W, S, n, sc, sc->a.data());
    transpose(sc->a.data(), S, n, sc->b.data() + static_cast<std::int64_t>(i0) * S);
  }
  // 3. horizontal pass: weighted sums of rows of b (row x * 3 + c holds column x of channel c)
  const bool flip = p[kFlip] != 0.f;
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  for (int c = 0; c < 3; ++c) {
    for (int ox = 0; ox < S; ++ox) {
      const int lo = sc->tx.lo[ox], n_taps = sc->tx.hi[ox] - lo;
      for (int k = 0; k < n_taps; ++k) {
        sc->rows_f32[k] = sc->b.data() + (static_cast<std::int64_t>(lo + k - c0) * 3 + c) * S;
      }
      const float* w = &sc->tx.weight[static_cast<size_t>(ox) * sc->tx.max_taps];
      const int x = flip ? S - 1 - ox : ox;
      weighted_rows(sc->rows_f32.data(), w, n_taps, S, t_CXY + c * plane + static_cast<std::int64_t>(x) * S);
    }
  }
}

// f(r, g, b) on n pixels of planar rows; values go through locals so the loop vectorises.
template <class F>
void each_pixel(int n, float* __restrict__ r, float* __restrict__ g, float* __restrict__ b, F f) {
  for (int i = 0; i < n; ++i) {
    float x = r[i], y = g[i], z = b[i];
    f(x, y, z);
    r[i] = x;
    g[i] = y;
    b[i] = z;
  }
}

void row_op(int op, float factor, float mean, int n, float* r, float* g, float* b) {
  switch (op) {
    case kOpBrightness:
      each_pixel(n, r, g, b, [=](float& x, float& y, float& z) { brightness_pixel(x, y, z, factor); });
      break;
    case kOpContrast:
      each_pixel(n, r, g, b, [=](float& x, float& y, float& z) { contrast_pixel(x, y, z, factor, mean); });
      break;
    case kOpSaturation:
      each_pixel(n, r, g, b, [=](float& x, float& y, float& z) { saturation_pixel(x, y, z, factor); });
      break;
    default:
      each_pixel(n, r, g, b, [=](float& x, float& y, float& z) { hue_pixel(x, y, z, factor); });
  }
}

// Sum of the gray levels of n pixels, in 16 float lanes (vectorised) then double.
double row_gray_sum(int n, const float* __restrict__ r, const float* __restrict__ g, const float* __restrict__ b) {
  constexpr int kLanes = 16;
  float part[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) part[j] += gray(r[i + j], g[i + j], b[i + j]);
  }
  double total = 0.0;
  for (; i < n; ++i) total += gray(r[i], g[i], b[i]);
  for (int j = 0; j < kLanes; ++j) total += part[j];
  return total;
}

// Ops ops[k0, k1) on every row of t (3, S, S); clamp first (pass 1: the resampling overshoot),
// grayscale last (pass 2); returns the sum of the gray levels after the ops when sum_gray.
double color_pass(const int* ops, int k0, int k1, const float* p, float mean, int S, float* t, bool clamp,
                  bool to_gray, bool sum_gray) {
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  double total = 0.0;
  for (int x = 0; x < S; ++x) {
    float* r = t + static_cast<std::int64_t>(x) * S;
    float* g = r + plane;
    float* b = g + plane;
    if (clamp) {
      each_pixel(S, r, g, b, [](float& u, float& v, float& w) {
        u = clamp01(u);
        v = clamp01(v);
        w = clamp01(w);
      });
    }
    for (int k = k0; k < k1; ++k) row_op(ops[k], p[kBrightness + ops[k]], mean, S, r, g, b);
    if (to_gray) each_pixel(S, r, g, b, [](float& u, float& v, float& w) { u = v = w = gray(u, v, w); });
    if (sum_gray) total += row_gray_sum(S, r, g, b);
  }
  return total;
}

// Clamp, colour jitter (the table's op order) and grayscale of t (3, S, S), in one pass over the
// rows, or two when contrast (a blend with the crop's mean gray) follows other ops.
void apply_colors(const float* p, int S, float* t) {
  int ops[4], n_ops = 0, split = -1;
  if (p[kJitter] != 0.f) {
    for (int k = 0; k < 4; ++k) {
      ops[n_ops] = static_cast<int>(p[kOrder0 + k]);
      if (ops[n_ops] == kOpContrast) split = n_ops;
      ++n_ops;
    }
  }
  const bool to_gray = p[kGray] != 0.f;
  if (split < 0) {
    color_pass(ops, 0, n_ops, p, 0.f, S, t, true, to_gray, false);
    return;
  }
  const double total = color_pass(ops, 0, split, p, 0.f, S, t, true, false, true);
  const float mean = static_cast<float>(total / (static_cast<double>(S) * S));
  color_pass(ops, split, n_ops, p, mean, S, t, false, to_gray, false);
}

// Separable Gaussian blur of each S x S plane of t in place, reflect padding; both passes are
// weighted sums of contiguous rows.
void blur(float sigma, int radius, int S, float* t, Scratch* sc) {
  const int taps = 2 * radius + 1;
  float w[65];
  float total = 0.f;
  for (int k = -radius; k <= radius; ++k) total += (w[k + radius] = gauss_tap(k, sigma));
  for (int k = 0; k < taps; ++k) w[k] /= total;
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  sc->tmp.resize(plane);
  sc->pad.resize(S + 2 * radius);
  sc->rows_f32.resize(std::max<size_t>(sc->rows_f32.size(), taps));
  const float** rows = sc->rows_f32.data();
  for (int c = 0; c < 3; ++c) {
    float* x = t + c * plane;
    for (int y = 0; y < S; ++y) {  // along the rows: x -> tmp
      float* pad = sc->pad.data();
      const float* src = x + y * S;
      std::memcpy(pad + radius, src, sizeof(float) * S);
      for (int i = 1; i <= radius; ++i) {
        pad[radius - i] = src[reflect(-i, S)];
        pad[radius + S - 1 + i] = src[reflect(S - 1 + i, S)];
      }
      for (int k = 0; k < taps; ++k) rows[k] = pad + k;
      weighted_rows(rows, w, taps, S, sc->tmp.data() + y * S);
    }
    for (int y = 0; y < S; ++y) {  // across the rows: tmp -> x
      for (int k = 0; k < taps; ++k) {
        rows[k] = sc->tmp.data() + static_cast<std::int64_t>(reflect(y + k - radius, S)) * S;
      }
      weighted_rows(rows, w, taps, S, x + y * S);
    }
  }
}

inline void put(float v, float* o) { *o = v; }
inline void put(float v, std::uint16_t* o) { *o = to_bf16(v); }

// Solarize, normalise and store t (3, S, S) = t[c][x][y] as CHW out[c][y][x], kTile columns at a time.
template <class Out>
void store(const float* p, const float* t, int S, const float* mean, const float* inv_std, Out* out) {
  const bool sol = p[kSolarize] != 0.f;
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  for (int c = 0; c < 3; ++c) {
    const float m = mean[c], is = inv_std[c];
    const float* src = t + c * plane;
    Out* dst = out + c * plane;
    for (int x0 = 0; x0 < S; x0 += kTile) {
      const int x1 = std::min(S, x0 + kTile);
      for (int y = 0; y < S; ++y) {
        for (int x = x0; x < x1; ++x) {
          put(normalize(src[static_cast<std::int64_t>(x) * S + y], sol, m, is), dst + y * S + x);
        }
      }
    }
  }
}

void multicrop_cpu(std::uintptr_t images_ptr, std::uintptr_t image_offsets_ptr, std::uintptr_t image_shapes_ptr,
                   std::int64_t n_images, std::uintptr_t params_ptr, std::int64_t n_crops, std::uintptr_t out_ptr,
                   std::uintptr_t out_offsets_ptr, bool out_bf16, std::vector<float> mean, std::vector<float> std_,
                   int blur_radius, int num_threads) {
  if (mean.size() != 3 || std_.size() != 3) throw std::invalid_argument("multicrop: mean and std need 3 values");
  if (blur_radius < 0 || blur_radius > 32) throw std::invalid_argument("multicrop: blur_radius must be in [0, 32]");
  const auto* img_off = reinterpret_cast<const std::int64_t*>(image_offsets_ptr);  // (n_images,) HWC uint8 byte offsets
  const auto* img_hw = reinterpret_cast<const std::int64_t*>(image_shapes_ptr);    // (n_images, 2) H, W
  const auto* params = reinterpret_cast<const float*>(params_ptr);               // (n_crops, kNumCols)
  const auto* out_off = reinterpret_cast<const std::int64_t*>(out_offsets_ptr);    // (n_crops,) element offsets
  char* out = reinterpret_cast<char*>(out_ptr);                                   // flat f32/bf16 output
  const std::int64_t elem = out_bf16 ? 2 : 4;
  const float inv_std[3] = {1.f / std_[0], 1.f / std_[1], 1.f / std_[2]};
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
      sc.t.resize(static_cast<size_t>(3) * S * S);
      // images_ptr + offset in integer arithmetic: the offsets may address separate arrays (base 0)
      const auto* image = reinterpret_cast<const std::uint8_t*>(images_ptr + static_cast<std::uintptr_t>(img_off[img]));
      resample_crop(image, H, W, p, S, &sc, sc.t.data());
      apply_colors(p, S, sc.t.data());
      if (p[kSigma] > 0.f) blur(p[kSigma], blur_radius, S, sc.t.data(), &sc);
      void* dst = out + out_off[c] * elem;
      if (out_bf16) {
        store(p, sc.t.data(), S, mean.data(), inv_std, static_cast<std::uint16_t*>(dst));
      } else {
        store(p, sc.t.data(), S, mean.data(), inv_std, static_cast<float*>(dst));
      }
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
