// The fused multi-crop kernels and their launch, the same semantics and per-pixel math
// (augment/pixel_math.h) as the C++ path in multicrop.cpp. Two launches on the caller's stream:
//   1. resample_kernel: one thread per output pixel of every crop (grid.x = crop); the
//      antialiased bicubic weights are separable and summed as a 2-D tap loop, flip folded in.
//   2. finish_kernel: one block per crop; colour ops in the table's order (contrast needs a
//      block reduction of the crop's mean gray), grayscale, blur (through a second workspace
//      plane), solarize, normalise, store float32 or bf16 CHW.
// All pointers are device pointers; the float32 workspace holds 2 * total output elements.
// Compiled by nvcc into fastvit._C_cuda (multicrop.cu) and, unchanged, as host C++ on the runtime's
// host emulation (emulation/), which runs it in the CPU tests: include it in one file per binary.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "augment/pixel_math.h"
#include "cuda/launch.h"

namespace fastvit::cuda {
namespace {

using namespace fastvit::augment;

struct Norm {
  float mean[3];
  float inv_std[3];
};

// The normalisation of the store step, after checking the arguments (std::invalid_argument: ValueError).
inline Norm make_norm(const std::vector<float>& mean, const std::vector<float>& std_, int blur_radius) {
  if (mean.size() != 3 || std_.size() != 3) throw std::invalid_argument("multicrop_cuda: mean and std need 3 values");
  if (blur_radius < 0 || blur_radius > 32) throw std::invalid_argument("multicrop_cuda: blur_radius must be in [0, 32]");
  Norm norm;
  for (int i = 0; i < 3; ++i) {
    norm.mean[i] = mean[i];
    norm.inv_std[i] = 1.f / std_[i];
  }
  return norm;
}

// Sum of the taps' unnormalised weights for one output index of one axis.
__device__ float tap_sum(const AxisTaps& t) {
  float total = 0.f;
  for (int j = t.lo; j < t.hi; ++j) total += axis_tap_weight(t, j);
  return total;
}

__global__ void resample_kernel(const std::uint8_t* __restrict__ images,  // packed HWC uint8 images
                                const std::int64_t* __restrict__ img_off,  // (n_images,) byte offsets
                                const std::int64_t* __restrict__ img_hw,   // (n_images, 2) H, W
                                const float* __restrict__ params,          // (n_crops, kNumCols)
                                const std::int64_t* __restrict__ out_off,  // (n_crops,) element offsets
                                float* __restrict__ ws) {                  // (2 * total,) f32 workspace
  const std::int64_t c = blockIdx.x;
  const float* p = params + c * kNumCols;
  const int S = static_cast<int>(p[kSize]);
  const std::int64_t pix = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (pix >= static_cast<std::int64_t>(S) * S) return;
  const int oy = static_cast<int>(pix / S), ox = static_cast<int>(pix % S);
  const std::int64_t img = static_cast<std::int64_t>(p[kImage]);
  const int H = static_cast<int>(img_hw[2 * img]), W = static_cast<int>(img_hw[2 * img + 1]);
  const std::uint8_t* src = images + img_off[img];
  const AxisTaps tx = axis_taps(ox, p[kX0], p[kW], S, W);
  const AxisTaps ty = axis_taps(oy, p[kY0], p[kH], S, H);
  const float xnorm = 1.f / tap_sum(tx);
  const float ynorm = 1.f / tap_sum(ty);
  float a0 = 0.f, a1 = 0.f, a2 = 0.f;
  for (int k = ty.lo; k < ty.hi; ++k) {
    const float wy = axis_tap_weight(ty, k) * ynorm;
    const std::uint8_t* row = src + static_cast<std::int64_t>(k) * W * 3;
    float r0 = 0.f, r1 = 0.f, r2 = 0.f;
    for (int j = tx.lo; j < tx.hi; ++j) {
      const float wx = axis_tap_weight(tx, j) * xnorm;
      const std::uint8_t* px = row + static_cast<std::int64_t>(j) * 3;
      r0 += wx * px[0];
      r1 += wx * px[1];
      r2 += wx * px[2];
    }
    a0 += wy * r0;
    a1 += wy * r1;
    a2 += wy * r2;
  }
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  const std::int64_t o = out_off[c] + static_cast<std::int64_t>(oy) * S + (p[kFlip] != 0.f ? S - 1 - ox : ox);
  ws[o] = clamp01(a0 / 255.f);
  ws[o + plane] = clamp01(a1 / 255.f);
  ws[o + 2 * plane] = clamp01(a2 / 255.f);
}

// Mean gray level of one crop (all threads of the block get the result).
__device__ float block_mean_gray(const float* r, const float* g, const float* b, std::int64_t plane) {
  __shared__ float partial[1024];
  float acc = 0.f;
  for (std::int64_t i = threadIdx.x; i < plane; i += blockDim.x) acc += gray(r[i], g[i], b[i]);
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned step = blockDim.x / 2; step > 0; step /= 2) {
    if (threadIdx.x < step) partial[threadIdx.x] += partial[threadIdx.x + step];
    __syncthreads();
  }
  const float mean = partial[0] / static_cast<float>(plane);
  __syncthreads();
  return mean;
}

__device__ void block_blur(float sigma, int radius, int S, float* x, float* tmp) {
  __shared__ float w[65];
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int k = -radius; k <= radius; ++k) total += (w[k + radius] = gauss_tap(k, sigma));
    for (int k = 0; k <= 2 * radius; ++k) w[k] /= total;
  }
  __syncthreads();
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  for (std::int64_t i = threadIdx.x; i < 3 * plane; i += blockDim.x) {
    const std::int64_t base = i - i % S;  // start of this row
    const int xo = static_cast<int>(i % S);
    float a = 0.f;
    for (int k = -radius; k <= radius; ++k) a += w[k + radius] * x[base + reflect(xo + k, S)];
    tmp[i] = a;
  }
  __syncthreads();
  for (std::int64_t i = threadIdx.x; i < 3 * plane; i += blockDim.x) {
    const std::int64_t c = i / plane;
    const int y = static_cast<int>((i % plane) / S), xo = static_cast<int>(i % S);
    float a = 0.f;
    for (int k = -radius; k <= radius; ++k) a += w[k + radius] * tmp[c * plane + reflect(y + k, S) * S + xo];
    x[i] = a;
  }
  __syncthreads();
}

__global__ void finish_kernel(const float* __restrict__ params,          // (n_crops, kNumCols)
                              const std::int64_t* __restrict__ out_off,  // (n_crops,) element offsets
                              float* __restrict__ ws,                    // (2 * total,) f32 workspace
                              std::int64_t total,                        // elements of all crops
                              void* __restrict__ out,                    // flat f32 or bf16 output
                              bool out_bf16, Norm norm, int radius) {
  const std::int64_t c = blockIdx.x;
  const float* p = params + c * kNumCols;
  const int S = static_cast<int>(p[kSize]);
  const std::int64_t plane = static_cast<std::int64_t>(S) * S;
  float* r = ws + out_off[c];
  float* g = r + plane;
  float* b = g + plane;
  if (p[kJitter] != 0.f) {
    for (int k = 0; k < 4; ++k) {
      const int op = static_cast<int>(p[kOrder0 + k]);
      const float factor = p[kBrightness + op];
      const float mean = op == kOpContrast ? block_mean_gray(r, g, b, plane) : 0.f;
      for (std::int64_t i = threadIdx.x; i < plane; i += blockDim.x) color_op(op, factor, mean, &r[i], &g[i], &b[i]);
      __syncthreads();
    }
  }
  if (p[kGray] != 0.f) {
    for (std::int64_t i = threadIdx.x; i < plane; i += blockDim.x) r[i] = g[i] = b[i] = gray(r[i], g[i], b[i]);
    __syncthreads();
  }
  if (p[kSigma] > 0.f) block_blur(p[kSigma], radius, S, r, ws + total + out_off[c]);
  const bool sol = p[kSolarize] != 0.f;
  for (std::int64_t i = threadIdx.x; i < 3 * plane; i += blockDim.x) {
    const int ch = static_cast<int>(i / plane);
    const float v = normalize(r[i], sol, norm.mean[ch], norm.inv_std[ch]);
    if (out_bf16) {
      static_cast<std::uint16_t*>(out)[out_off[c] + i] = to_bf16(v);
    } else {
      static_cast<float*>(out)[out_off[c] + i] = v;
    }
  }
}

constexpr int kResampleThreads = 256;
constexpr int kFinishThreads = 512;  // a power of two (block_mean_gray's tree), at most 1024

// Both launches on `stream`; the first launch error (cudaGetLastError after each), cudaSuccess if none.
cudaError_t launch_multicrop(const std::uint8_t* images, const std::int64_t* img_off, const std::int64_t* img_hw,
                             const float* params, std::int64_t n_crops, int max_size, void* out,
                             const std::int64_t* out_off, std::int64_t total, bool out_bf16, Norm norm,
                             int blur_radius, float* ws, cudaStream_t stream) {
  if (n_crops == 0) return cudaSuccess;
  const std::int64_t pixels = static_cast<std::int64_t>(max_size) * max_size;
  // crops along x (up to 2^31 - 1), pixel blocks along y (up to 65535: crops up to 4095 px)
  const dim3 grid(static_cast<unsigned>(n_crops),
                  static_cast<unsigned>((pixels + kResampleThreads - 1) / kResampleThreads));
  launch(resample_kernel, grid, dim3(kResampleThreads), 0, stream, images, img_off, img_hw, params, out_off, ws);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  launch(finish_kernel, dim3(static_cast<unsigned>(n_crops)), dim3(kFinishThreads), 0, stream, params, out_off, ws,
         total, out, out_bf16, norm, blur_radius);
  return cudaGetLastError();
}

}  // namespace
}  // namespace fastvit::cuda
