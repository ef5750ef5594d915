// A host emulation of the part of the CUDA runtime the kernels in csrc/ use, so that their bodies
// compile unchanged as host C++ and run on a CPU (tests/data/test_multicrop_emulated.py):
//   - threadIdx / blockIdx / blockDim / gridDim are thread-locals;
//   - the blocks of a launch run in turn; a block's threads are OS threads (one team per launch,
//     reused block after block) and __syncthreads() is a barrier among the block's live threads
//     (a thread that returned no longer takes part, as on Volta and later);
//   - __shared__ variables are function-local statics in one linker section: blocks run one at a
//     time, so one copy per variable is the block's shared memory, and the section's size bounds
//     every kernel's static shared memory;
//   - a launch checks CUDA's limits (CUDA C Programming Guide, "Compute Capabilities" table:
//     1024 threads per block, block dims (1024, 1024, 64), grid dims (2^31 - 1, 65535, 65535),
//     48 KB of static shared memory per block) and reports a violation as CUDA does, through
//     cudaGetLastError() (cudaErrorInvalidConfiguration), running nothing.
// Nothing here is fast: it exists to run the kernels' launch, indexing and synchronisation code in
// CI, under AddressSanitizer too.
#pragma once
#if defined(__CUDACC__)
#error "cuda_host.h emulates CUDA on the host; nvcc builds use the real runtime"
#endif

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static __attribute__((section("fastvit_cuda_shared")))

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };
using cudaStream_t = void*;

// The linker's bounds of the __shared__ section (GNU ld and lld define them for C-identifier names).
extern "C" char __start_fastvit_cuda_shared[] __attribute__((weak));
extern "C" char __stop_fastvit_cuda_shared[] __attribute__((weak));

namespace fastvit::emulation {

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr dim3 kMaxBlockDim{1024, 1024, 64};
constexpr dim3 kMaxGridDim{2147483647u, 65535, 65535};
constexpr std::size_t kMaxStaticShared = 48 * 1024;
constexpr auto kBarrierTimeout = std::chrono::seconds(120);

inline cudaError_t& last_error() {
  static thread_local cudaError_t err = cudaSuccess;
  return err;
}

inline const char*& last_message() {
  static thread_local const char* msg = "no error";
  return msg;
}

// Bytes of every __shared__ variable in this binary (an upper bound on one kernel's static shared memory).
inline std::size_t static_shared_bytes() {
  if (__start_fastvit_cuda_shared == nullptr) return 0;
  return static_cast<std::size_t>(__stop_fastvit_cuda_shared - __start_fastvit_cuda_shared);
}

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "fastvit cuda emulation: %s\n", what);
  std::abort();
}

// The OS threads of one block, reused for every block of a launch. run_block() hands them the block
// index, lets them run the kernel, and returns when all have returned; sync() is __syncthreads().
class Team {
 public:
  template <class Body>
  Team(dim3 block, dim3 grid, Body body) : size_(block.x * block.y * block.z) {
    threads_.reserve(size_);
    for (unsigned t = 0; t < size_; ++t) {
      const uint3 idx{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      threads_.emplace_back([this, idx, block, grid, body] { work(idx, block, grid, body); });
    }
  }
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  ~Team() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++generation_;
    }
    start_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run_block(uint3 block) {
    std::unique_lock<std::mutex> lock(mu_);
    block_ = block;
    live_ = size_;
    arrived_ = 0;
    ++generation_;
    start_.notify_all();
    if (!done_.wait_for(lock, kBarrierTimeout, [&] { return live_ == 0; })) die("a block did not finish in 120 s");
  }

  void sync() {
    std::unique_lock<std::mutex> lock(mu_);
    const std::uint64_t phase = phase_;
    if (++arrived_ == live_) {
      release();
      return;
    }
    if (!barrier_.wait_for(lock, kBarrierTimeout, [&] { return phase_ != phase; })) {
      die("__syncthreads waited 120 s: some threads of the block never reached it");
    }
  }

  static Team*& current() {
    static thread_local Team* team = nullptr;
    return team;
  }

 private:
  void release() {  // with mu_ held: every live thread is at the barrier
    arrived_ = 0;
    ++phase_;
    barrier_.notify_all();
  }

  template <class Body>
  void work(uint3 idx, dim3 block, dim3 grid, Body body) {
    threadIdx = idx;
    blockDim = block;
    gridDim = grid;
    current() = this;
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        start_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
        blockIdx = block_;
      }
      body();
      std::lock_guard<std::mutex> lock(mu_);
      --live_;  // this thread has returned: the barrier no longer waits for it
      if (live_ == 0) {
        done_.notify_one();
      } else if (arrived_ > 0 && arrived_ == live_) {
        release();
      }
    }
  }

  const unsigned size_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable start_, done_, barrier_;
  std::uint64_t generation_ = 0, phase_ = 0;
  unsigned live_ = 0, arrived_ = 0;
  bool stop_ = false;
  uint3 block_;
};

inline bool fail(cudaError_t err, const char* message) {
  last_error() = err;
  last_message() = message;
  return false;
}

// CUDA's launch-configuration limits; false (and the error recorded) when one is broken.
inline bool check_launch(dim3 grid, dim3 block, std::size_t dynamic_shared) {
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    return fail(cudaErrorInvalidConfiguration, "a grid or block dimension is 0");
  }
  if (static_cast<std::uint64_t>(block.x) * block.y * block.z > kMaxThreadsPerBlock) {
    return fail(cudaErrorInvalidConfiguration, "more than 1024 threads per block");
  }
  if (block.x > kMaxBlockDim.x || block.y > kMaxBlockDim.y || block.z > kMaxBlockDim.z) {
    return fail(cudaErrorInvalidConfiguration, "a block dimension exceeds (1024, 1024, 64)");
  }
  if (grid.x > kMaxGridDim.x || grid.y > kMaxGridDim.y || grid.z > kMaxGridDim.z) {
    return fail(cudaErrorInvalidConfiguration, "a grid dimension exceeds (2^31 - 1, 65535, 65535)");
  }
  if (static_shared_bytes() + dynamic_shared > kMaxStaticShared) {
    return fail(cudaErrorInvalidConfiguration, "more than 48 KB of shared memory per block without the opt-in");
  }
  return true;
}

// kernel<<<grid, block, dynamic_shared, stream>>>(args...): the blocks in turn (x fastest), each on the team.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t dynamic_shared, cudaStream_t, A&&... args) {
  static std::mutex one_launch_at_a_time;  // __shared__ statics are one per binary
  if (!check_launch(grid, block, dynamic_shared)) return;
  std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  std::tuple<P...> params(std::forward<A>(args)...);
  Team team(block, grid, [kernel, &params] { std::apply(kernel, params); });
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) team.run_block(uint3{x, y, z});
    }
  }
}

}  // namespace fastvit::emulation

inline void __syncthreads() {
  auto* team = fastvit::emulation::Team::current();
  if (team == nullptr) fastvit::emulation::die("__syncthreads() outside a kernel");
  team->sync();
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t err = fastvit::emulation::last_error();
  fastvit::emulation::last_error() = cudaSuccess;
  return err;
}

inline const char* cudaGetErrorString(cudaError_t err) {
  return err == cudaSuccess ? "no error" : fastvit::emulation::last_message();
}
