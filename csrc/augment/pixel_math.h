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
FV_HD float cubic(float x) {
  const float a = -0.5f;
  x = fabsf(x);
  if (x < 1.f) return ((a + 2.f) * x - (a + 3.f)) * x * x + 1.f;
  if (x < 2.f) return ((a * x - 5.f * a) * x + 8.f * a) * x - 4.f * a;
  return 0.f;
}

// Taps of output index i when the span [start, start + len) of an axis with n_in pixels is
// resampled to n_out pixels: input indices [*lo, *hi), weight of tap j is
// cubic((j + 0.5 - *center) / *stretch) (normalised by the sum over the taps).
FV_HD void resample_taps(int i, float start, float len, int n_out, int n_in, int* lo, int* hi, float* center,
                         float* stretch) {
  const float scale = len / static_cast<float>(n_out);
  *stretch = scale > 1.f ? scale : 1.f;
  *center = start + (static_cast<float>(i) + 0.5f) * scale;
  const float support = 2.f * *stretch;
  int bound_lo = static_cast<int>(floorf(start));
  int bound_hi = static_cast<int>(ceilf(start + len));
  bound_lo = bound_lo < 0 ? 0 : bound_lo;
  bound_hi = bound_hi > n_in ? n_in : bound_hi;
  int a = static_cast<int>(floorf(*center - support));
  int b = static_cast<int>(ceilf(*center + support));
  *lo = a < bound_lo ? bound_lo : a;
  *hi = b > bound_hi ? bound_hi : b;
}

FV_HD float tap_weight(int j, float center, float stretch) {
  return cubic((static_cast<float>(j) + 0.5f - center) / stretch);
}

FV_HD float gray(float r, float g, float b) { return 0.299f * r + 0.587f * g + 0.114f * b; }

// One channel of HSV -> RGB without branches: n = 5 (red), 3 (green), 1 (blue); h6 = hue * 6.
FV_HD float hsv_channel(float n, float h6, float v, float s) {
  float k = n + h6;
  k = k - 6.f * floorf(k / 6.f);
  const float m = min2(max2(min2(k, 4.f - k), 0.f), 1.f);
  return clamp01(v - v * s * m);
}

// Rotate the hue by `shift` turns (RGB -> HSV -> RGB); gray pixels are unchanged. Selects, not
// branches, so the CPU loop vectorises.
FV_HD void adjust_hue(float* r, float* g, float* b, float shift) {
  const float mx = max2(*r, max2(*g, *b));
  const float mn = min2(*r, min2(*g, *b));
  const float chroma = mx - mn;
  const bool colour = chroma > 0.f;
  const float safe = colour ? chroma : 1.f;
  const float s = chroma / (colour ? mx : 1.f);
  const float num = mx == *r ? *g - *b : (mx == *g ? *b - *r : *r - *g);
  const float sector = mx == *r ? 0.f : (mx == *g ? 2.f : 4.f);
  float h = sector + num / safe;  // one unconditional division: the loop stays branch-free
  h = h / 6.f + shift;
  h = h - floorf(h);
  const float h6 = h * 6.f;
  const float nr = hsv_channel(5.f, h6, mx, s), ng = hsv_channel(3.f, h6, mx, s), nb = hsv_channel(1.f, h6, mx, s);
  *r = colour ? nr : *r;
  *g = colour ? ng : *g;
  *b = colour ? nb : *b;
}

// One colour op on one pixel; `mean` is the crop's mean gray level (used by contrast only).
FV_HD void color_op(int op, float factor, float mean, float* r, float* g, float* b) {
  if (op == kOpBrightness) {
    *r = clamp01(*r * factor);
    *g = clamp01(*g * factor);
    *b = clamp01(*b * factor);
  } else if (op == kOpContrast) {
    const float m = (1.f - factor) * mean;
    *r = clamp01(factor * *r + m);
    *g = clamp01(factor * *g + m);
    *b = clamp01(factor * *b + m);
  } else if (op == kOpSaturation) {
    const float m = (1.f - factor) * gray(*r, *g, *b);
    *r = clamp01(factor * *r + m);
    *g = clamp01(factor * *g + m);
    *b = clamp01(factor * *b + m);
  } else {
    adjust_hue(r, g, b, factor);
  }
}

FV_HD float solarize(float x) { return x >= 0.5f ? 1.f - x : x; }

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
