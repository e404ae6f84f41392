// Threads for the kernels: a pool whose callers claim chunks of work alongside its helpers.
#pragma once

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace banterbox {

// ---- Threads ----
// A matmul's work is cut into chunks that threads claim one by one; the caller claims too and
// waits only for chunks a helper has claimed and is running. On a shared machine a descheduled
// helper then costs nothing: the caller runs its share, where a fork-join (OpenMP) region would
// wait out the helper's time slice at its barrier, once per matmul, 121 times a decode step.
class ChunkPool {
 public:
  using Fn = void (*)(void* ctx, int64_t chunk);

  static ChunkPool& get() {
    // Never destroyed: helpers start on first use and sleep until the process ends.
    static ChunkPool* pool = new ChunkPool;
    return *pool;
  }

  // fn(ctx, c) for c in [0, num_chunks), on up to num_threads threads (the caller one of them).
  void run(int64_t num_chunks, int num_threads, Fn fn, void* ctx) {
    if (num_chunks <= 0) return;
    const int helpers = std::min<int>(num_threads - 1, static_cast<int>(num_chunks) - 1);
    if (helpers <= 0) {
      for (int64_t c = 0; c < num_chunks; ++c) fn(ctx, c);
      return;
    }
    std::lock_guard<std::mutex> caller(run_mutex_);  // one job at a time (one engine thread)
    start_helpers(helpers);
    fn_ = fn;
    ctx_ = ctx;
    done_.store(0, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & kGenerationMask;
    max_helper_ = helpers;
    state_.store(pack(generation_, static_cast<uint64_t>(num_chunks), 0), std::memory_order_seq_cst);
    if (num_sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    int64_t finished = 0;
    for (int64_t c; (c = claim(generation_)) >= 0; ++finished) fn(ctx, c);
    done_.fetch_add(finished, std::memory_order_acq_rel);
    while (done_.load(std::memory_order_acquire) < num_chunks) _mm_pause();
  }

 private:
  // state_: generation (24 bits) | number of chunks (20) | next unclaimed chunk (20).
  static constexpr uint64_t kGenerationMask = (1u << 24) - 1, kField = (1u << 20) - 1;
  static uint64_t pack(uint64_t gen, uint64_t n, uint64_t next) { return gen << 40 | n << 20 | next; }

  // The next chunk of job `gen`, or -1 when it has none left (or is no longer the current job).
  int64_t claim(uint64_t gen) {
    uint64_t s = state_.load(std::memory_order_acquire);
    while (true) {
      const uint64_t n = (s >> 20) & kField, next = s & kField;
      if ((s >> 40) != gen || next >= n) return -1;
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
        return static_cast<int64_t>(next);
      }
    }
  }

  void start_helpers(int count) {
    while (static_cast<int>(helpers_.size()) < count) {
      const int index = static_cast<int>(helpers_.size()) + 1;
      helpers_.emplace_back([this, index] { helper_loop(index); });
      helpers_.back().detach();
    }
  }

  void helper_loop(int index) {
    uint64_t seen = 0;
    while (true) {
      uint64_t gen = (state_.load(std::memory_order_acquire) >> 40);
      // Spin a while (a decode step's matmuls come tens of microseconds apart), then sleep.
      for (int spin = 0; gen == seen && spin < kSpins; ++spin) {
        _mm_pause();
        gen = state_.load(std::memory_order_acquire) >> 40;
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        num_sleeping_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] { return (state_.load(std::memory_order_seq_cst) >> 40) != seen; });
        num_sleeping_.fetch_sub(1, std::memory_order_seq_cst);
        continue;
      }
      seen = gen;
      if (index > max_helper_) continue;  // this job asked for fewer threads
      const Fn fn = fn_;
      void* ctx = ctx_;
      int64_t finished = 0;
      for (int64_t c; (c = claim(gen)) >= 0; ++finished) {
        // The claim succeeded, so job `gen` cannot end before this chunk: fn_ and ctx_ stand.
        fn(ctx, c);
      }
      if (finished) done_.fetch_add(finished, std::memory_order_acq_rel);
    }
  }

  static constexpr int kSpins = 4000;  // some tens of microseconds of pause
  std::mutex run_mutex_, sleep_mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> helpers_;
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> num_sleeping_{0};
  uint64_t generation_ = 0;
  std::atomic<int> max_helper_{0};
  std::atomic<Fn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
};

// Splits [0, n) into chunks of `grain` or more and runs body(begin, end) over them in parallel.
template <class Body>
void parallel_chunks(int64_t n, int64_t grain, const Body& body) {
  const int threads = at::get_num_threads();
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  const int64_t num_chunks = std::min<int64_t>(max_chunks, 8 * threads);  // load balance
  struct Ctx {
    const Body* body;
    int64_t n, num_chunks;
  } ctx{&body, n, num_chunks};
  ChunkPool::get().run(num_chunks, threads, [](void* p, int64_t c) {
    const Ctx& k = *static_cast<Ctx*>(p);
    (*k.body)(c * k.n / k.num_chunks, (c + 1) * k.n / k.num_chunks);
  }, &ctx);
}

}  // namespace banterbox
