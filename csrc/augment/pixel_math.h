// Per-pixel math of the fused multi-crop augmentation, shared by the C++/OpenMP path
// (multicrop.cpp) and the CUDA path (multicrop.cu) so the CPU tests cover the GPU arithmetic.
// The semantics are defined by fastvit/data/multicrop.py:multicrop_ref; keep the two in step.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FV_HD __host__ __device__ __forceinline__
#else
#define FV_HD inline
#endif

namespace fastvit::augment {

// Column layout of one row of the float32 crop-parameter table (see fastvit/data/augment.py).
enum Col : int {
  kImage = 0,       // index of the source image in the packed batch
  kY0 = 1,          // crop box top, in decoded-image pixels (may be fractional)
  kX0 = 2,          // crop box left
  kH = 3,           // crop box height
  kW = 4,           // crop box width
  kSize = 5,        // output side S (square crops)
  kFlip = 6,        // 1: mirror horizontally after resampling
  kJitter = 7,      // 1: apply the four colour ops below in the order kOrder0..3
  kBrightness = 8,  // brightness factor
  kContrast = 9,    // contrast factor
  kSaturation = 10, // saturation factor
  kHue = 11,        // hue shift in turns, [-0.5, 0.5]
  kOrder0 = 12,     // kOrder0..kOrder0+3: permutation of the ops 0=brightness 1=contrast 2=saturation 3=hue
  kGray = 16,       // 1: convert to grayscale (3 equal channels)
  kSigma = 17,      // Gaussian blur sigma; 0 = no blur
  kSolarize = 18,   // 1: x >= 0.5 -> 1 - x
  kNumCols = 20,
};

enum ColorOp : int { kOpBrightness = 0, kOpContrast = 1, kOpSaturation = 2, kOpHue = 3 };

FV_HD float clamp01(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
// min / max as selects (inputs are never NaN here): they vectorise without -ffast-math.
FV_HD float min2(float a, float b) { return a < b ? a : b; }
FV_HD float max2(float a, float b) { return a > b ? a : b; }

// Keys cubic convolution with a = -0.5 (the antialiased-resize convention of PIL and torch).
template <class R>
FV_HD R cubic(R x) {
  const R a = R(-0.5);
  x = x < R(0) ? -x : x;
  if (x < R(1)) return ((a + R(2)) * x - (a + R(3))) * x * x + R(1);
  if (x < R(2)) return ((a * x - R(5) * a) * x + R(8) * a) * x - R(4) * a;
  return R(0);
}

// Taps of output index i when the span [start, start + len) of an axis with n_in pixels is
// resampled to n_out pixels: input indices [*lo, *hi), weight of tap j is
// cubic((j + 0.5 - *center) / *stretch) (normalised by the sum over the taps). Positions are in
// double on both paths: in float32, tap positions near x = 1000 px carry rounding of ~6e-5 px,
// which put a float CUDA kernel 2.3e-4 away from the C++ path on sharp images.
FV_HD void resample_taps(int i, double start, double len, int n_out, int n_in, int* lo, int* hi, double* center,
                         double* stretch) {
  const double scale = len / n_out;
  *stretch = scale > 1.0 ? scale : 1.0;
  *center = start + (i + 0.5) * scale;
  const double support = 2.0 * *stretch;
  int bound_lo = static_cast<int>(floor(start));
  int bound_hi = static_cast<int>(ceil(start + len));
  bound_lo = bound_lo < 0 ? 0 : bound_lo;
  bound_hi = bound_hi > n_in ? n_in : bound_hi;
  int a = static_cast<int>(floor(*center - support));
  int b = static_cast<int>(ceil(*center + support));
  *lo = a < bound_lo ? bound_lo : a;
  *hi = b > bound_hi ? bound_hi : b;
}

FV_HD double tap_weight(int j, double center, double stretch) { return cubic((j + 0.5 - center) / stretch); }

// The taps of one output index for a kernel that weighs them in float (one GPU thread per output):
// positions in double as above, then each tap's argument as a float offset from the first tap's,
// cubic(first + (j - lo) * step): small numbers, exact to ~1e-7 wherever the crop sits in the image.
struct AxisTaps {
  int lo, hi;
  float first, step;
};

FV_HD AxisTaps axis_taps(int i, double start, double len, int n_out, int n_in) {
  AxisTaps t;
  double center, stretch;
  resample_taps(i, start, len, n_out, n_in, &t.lo, &t.hi, &center, &stretch);
  t.first = static_cast<float>((t.lo + 0.5 - center) / stretch);
  t.step = static_cast<float>(1.0 / stretch);
  return t;
}

FV_HD float axis_tap_weight(const AxisTaps& t, int j) { return cubic(t.first + static_cast<float>(j - t.lo) * t.step); }

FV_HD float gray(float r, float g, float b) { return 0.299f * r + 0.587f * g + 0.114f * b; }

// x - floor(x) through an integer truncation and a select: GCC vectorises it where it does not
// vectorise floorf (without -ffast-math). Valid for |x| < 2^31 (hue angles here are within [-2, 2]).
FV_HD float frac(float x) {
  const float t = static_cast<float>(static_cast<int>(x));
  return x - (t > x ? t - 1.f : t);
}

// One channel of HSV -> RGB: v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6 and
// v * s = chroma; n = 5 (red), 3 (green), 1 (blue); h6 = hue * 6 in [0, 6], so k < 12 and one
// conditional subtraction is the modulo.
FV_HD float hsv_channel(float n, float h6, float v, float chroma) {
  float k = n + h6;
  k = k >= 6.f ? k - 6.f : k;
  return clamp01(v - chroma * min2(max2(min2(k, 4.f - k), 0.f), 1.f));
}

// Rotate the hue by `shift` turns (RGB -> HSV -> RGB); gray pixels are unchanged. Values in,
// values out, selects instead of branches and no floorf: the CPU row loops vectorise.
FV_HD void hue_pixel(float& r, float& g, float& b, float shift) {
  const float mx = max2(r, max2(g, b));
  const float chroma = mx - min2(r, min2(g, b));
  const bool colour = chroma > 0.f;
  const bool is_r = mx == r, is_g = mx == g;
  const float num = is_r ? g - b : (is_g ? b - r : r - g);
  const float sector = is_r ? 0.f : (is_g ? 2.f : 4.f);
  const float h6 = frac((sector + num / (colour ? chroma : 1.f)) / 6.f + shift) * 6.f;
  const float nr = hsv_channel(5.f, h6, mx, chroma);
  const float ng = hsv_channel(3.f, h6, mx, chroma);
  const float nb = hsv_channel(1.f, h6, mx, chroma);
  r = colour ? nr : r;
  g = colour ? ng : g;
  b = colour ? nb : b;
}

FV_HD void brightness_pixel(float& r, float& g, float& b, float factor) {
  r = clamp01(r * factor);
  g = clamp01(g * factor);
  b = clamp01(b * factor);
}

// Blend with `mean` (the crop's mean gray level): contrast.
FV_HD void contrast_pixel(float& r, float& g, float& b, float factor, float mean) {
  const float m = (1.f - factor) * mean;
  r = clamp01(factor * r + m);
  g = clamp01(factor * g + m);
  b = clamp01(factor * b + m);
}

// Blend with the pixel's own gray level: saturation.
FV_HD void saturation_pixel(float& r, float& g, float& b, float factor) {
  const float m = (1.f - factor) * gray(r, g, b);
  r = clamp01(factor * r + m);
  g = clamp01(factor * g + m);
  b = clamp01(factor * b + m);
}

// One colour op on one pixel; `mean` is the crop's mean gray level (used by contrast only).
FV_HD void color_op(int op, float factor, float mean, float* r, float* g, float* b) {
  if (op == kOpBrightness) {
    brightness_pixel(*r, *g, *b, factor);
  } else if (op == kOpContrast) {
    contrast_pixel(*r, *g, *b, factor, mean);
  } else if (op == kOpSaturation) {
    saturation_pixel(*r, *g, *b, factor);
  } else {
    hue_pixel(*r, *g, *b, factor);
  }
}

FV_HD float solarize(float x) { return x >= 0.5f ? 1.f - x : x; }

// The last per-pixel step: optional solarize, then (x - mean) / std as a multiply by 1 / std.
FV_HD float normalize(float x, bool sol, float mean, float inv_std) {
  return ((sol ? solarize(x) : x) - mean) * inv_std;
}

// Mirror padding without repeating the edge pixel (torch's "reflect"): -1 -> 1, n -> n - 2.
FV_HD int reflect(int i, int n) {
  if (i < 0) i = -i;
  if (i >= n) i = 2 * n - 2 - i;
  return i;
}

// Unnormalised Gaussian tap k in [-radius, radius]; callers normalise by the sum.
FV_HD float gauss_tap(int k, float sigma) {
  const float x = static_cast<float>(k) / sigma;
  return expf(-0.5f * x * x);
}

// float32 -> bfloat16 bits, round to nearest even (NaN kept quiet).
FV_HD std::uint16_t to_bf16(float x) {
  std::uint32_t u;
  memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

}  // namespace fastvit::augment
