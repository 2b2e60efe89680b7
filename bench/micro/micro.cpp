// bench/micro/micro.cpp: Google Benchmark programs over the allocator's entry points.
//
// Linked against glibc only: run it as is for glibc, and with LD_PRELOAD for any other
// allocator, so the same binary compares them:
//
//   build/bench/nebula-micro --benchmark_filter=malloc_free
//   LD_PRELOAD=build/libnebulamem.so build/bench/nebula-micro --benchmark_filter=malloc_free
//   LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 build/bench/nebula-micro ...
//
// or `bench/run.py --micro` to run it under every allocator and print one table.
// Every benchmark reports items/s (one item = one allocation and its free). The first line of
// the output's context names the allocator found mapped in the process ("allocator").
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <vector>

#include "../workloads/common.hpp"

namespace {

// malloc/free pairs, one size at a time: the thread cache's fast path for each size class,
// then the medium, large and huge paths up to 1 MiB.
void BM_malloc_free(benchmark::State& st) {
  const size_t n = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    void* p = malloc(n);
    benchmark::DoNotOptimize(p);
    free(p);
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_malloc_free)->RangeMultiplier(2)->Range(8, 1 << 20)->Arg(24)->Arg(48)->Arg(96)->Arg(320)->Arg(3000)->Arg(40000);

// Batches: allocate N blocks, then free them in allocation order (fifo), reverse order (lifo) or
// a random order fixed for the run. Args: N, size.
enum Order { kFifo, kLifo, kRandom };
template <Order order>
void batch(benchmark::State& st) {
  const size_t count = static_cast<size_t>(st.range(0)), size = static_cast<size_t>(st.range(1));
  std::vector<void*> v(count);
  std::vector<uint32_t> perm(count);
  for (size_t i = 0; i < count; i++) perm[i] = static_cast<uint32_t>(order == kLifo ? count - 1 - i : i);
  if (order == kRandom) std::shuffle(perm.begin(), perm.end(), std::mt19937(42));
  for (auto _ : st) {
    for (size_t i = 0; i < count; i++) {
      v[i] = malloc(size);
      benchmark::DoNotOptimize(v[i]);
    }
    for (size_t i = 0; i < count; i++) free(v[perm[i]]);
  }
  st.SetItemsProcessed(st.iterations() * static_cast<int64_t>(count));
}
void BM_batch_fifo(benchmark::State& st) { batch<kFifo>(st); }
void BM_batch_lifo(benchmark::State& st) { batch<kLifo>(st); }
void BM_batch_random(benchmark::State& st) { batch<kRandom>(st); }
BENCHMARK(BM_batch_fifo)->ArgsProduct({{64, 1024, 16384}, {16, 128, 1024}})->ArgNames({"n", "size"});
BENCHMARK(BM_batch_lifo)->ArgsProduct({{64, 1024, 16384}, {16, 128, 1024}})->ArgNames({"n", "size"});
BENCHMARK(BM_batch_random)->ArgsProduct({{64, 1024, 16384}, {16, 128, 1024}})->ArgNames({"n", "size"});

// calloc: zeroed memory; large sizes show whether the allocator knows fresh pages are zero.
void BM_calloc(benchmark::State& st) {
  const size_t n = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    void* p = calloc(1, n);
    benchmark::DoNotOptimize(p);
    free(p);
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_calloc)->Arg(16)->Arg(64)->Arg(256)->Arg(4096)->Arg(65536)->Arg(1 << 20);

// realloc growth: from 16 bytes to the limit, by half again each step (a growing vector, step
// 0), or by `step` bytes each step (appending to a string: 16; a C buffer grown page by page:
// 4096, which reaches the large tier). One item = one realloc.
void BM_realloc_grow(benchmark::State& st) {
  const size_t limit = static_cast<size_t>(st.range(0));
  const size_t step = static_cast<size_t>(st.range(1));
  int64_t steps = 0;
  for (auto _ : st) {
    char* p = nullptr;
    for (size_t s = 16; s <= limit; s = step != 0 ? s + step : s + s / 2) {
      p = static_cast<char*>(realloc(p, s));
      p[s - 1] = 1;
      steps++;
    }
    benchmark::DoNotOptimize(p);
    free(p);
  }
  st.SetItemsProcessed(steps);
}
BENCHMARK(BM_realloc_grow)->Args({4096, 0})->Args({65536, 0})->Args({1 << 20, 0})->Args({4096, 16})->Args({65536, 16})->Args({2 << 20, 4096})->ArgNames({"limit", "step"});

// Aligned allocation: posix_memalign and aligned_alloc of 64 bytes at each alignment.
void BM_posix_memalign(benchmark::State& st) {
  const size_t align = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    void* p = nullptr;
    if (posix_memalign(&p, align, 64) != 0) st.SkipWithError("posix_memalign failed");
    benchmark::DoNotOptimize(p);
    free(p);
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_posix_memalign)->Arg(16)->Arg(64)->Arg(256)->Arg(4096)->Arg(65536);
void BM_aligned_alloc(benchmark::State& st) {
  const size_t align = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    void* p = aligned_alloc(align, align > 64 ? align : 64);
    benchmark::DoNotOptimize(p);
    free(p);
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_aligned_alloc)->Arg(16)->Arg(64)->Arg(256)->Arg(4096)->Arg(65536);

// operator new / delete: plain, sized delete, array, and aligned new.
void BM_new_delete(benchmark::State& st) {
  const size_t n = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    void* p = ::operator new(n);
    benchmark::DoNotOptimize(p);
    ::operator delete(p);
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_new_delete)->Arg(8)->Arg(32)->Arg(128)->Arg(1024)->Arg(16384);
void BM_new_sized_delete(benchmark::State& st) {
  const size_t n = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    void* p = ::operator new(n);
    benchmark::DoNotOptimize(p);
    ::operator delete(p, n);
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_new_sized_delete)->Arg(8)->Arg(32)->Arg(128)->Arg(1024);
void BM_new_array(benchmark::State& st) {
  const size_t n = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    char* p = new char[n];
    benchmark::DoNotOptimize(p);
    delete[] p;
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_new_array)->Arg(32)->Arg(1024);
void BM_new_aligned(benchmark::State& st) {
  const size_t align = static_cast<size_t>(st.range(0));
  for (auto _ : st) {
    void* p = ::operator new(64, std::align_val_t{align});
    benchmark::DoNotOptimize(p);
    ::operator delete(p, std::align_val_t{align});
  }
  st.SetItemsProcessed(st.iterations());
}
BENCHMARK(BM_new_aligned)->Arg(64)->Arg(4096);

// 1 to 8 threads, each allocating a batch of 256 blocks and freeing it (no sharing): how the
// thread caches scale. Real time, so the figure is throughput of the whole process.
void BM_threads_local(benchmark::State& st) {
  const size_t size = static_cast<size_t>(st.range(0));
  std::vector<void*> v(256);
  for (auto _ : st) {
    for (auto& p : v) {
      p = malloc(size);
      benchmark::DoNotOptimize(p);
    }
    for (auto p : v) free(p);
  }
  st.SetItemsProcessed(st.iterations() * 256);
}
BENCHMARK(BM_threads_local)->Arg(64)->Arg(1024)->ThreadRange(1, 8)->UseRealTime();

// Cross-thread free: thread i allocates a batch of 64 blocks and hands it to thread i+1 (mod n),
// which frees it; every block dies on a thread other than its owner. With 1 thread the batch
// is freed locally (the baseline). A mailbox holding more than 64 batches (its reader was
// descheduled) makes the writer free its batch itself rather than queue without bound.
struct alignas(64) Mailbox {
  std::mutex mu;
  std::vector<std::vector<void*>> batches;
};
Mailbox g_box[8];
void BM_cross_thread_free(benchmark::State& st) {
  const int n = st.threads();
  const int me = st.thread_index();
  const size_t size = static_cast<size_t>(st.range(0));
  Mailbox& mine = g_box[me];
  Mailbox& next = g_box[(me + 1) % n];
  std::vector<std::vector<void*>> got;
  std::vector<void*> batch;
  int64_t remote = 0;
  for (auto _ : st) {
    batch.resize(64);
    for (auto& p : batch) {
      p = malloc(size);
      benchmark::DoNotOptimize(p);
    }
    if (n == 1) {
      for (auto p : batch) free(p);
    } else {
      {
        std::lock_guard<std::mutex> lk(next.mu);
        if (next.batches.size() < 64) {
          next.batches.push_back(std::move(batch));
          batch.clear();
        }
      }
      for (auto p : batch) free(p);
      batch.clear();
      {
        std::lock_guard<std::mutex> lk(mine.mu);
        got.swap(mine.batches);
      }
      for (auto& b : got) {
        for (auto p : b) free(p);
        remote += static_cast<int64_t>(b.size());
      }
      got.clear();
    }
  }
  // The loop's end is a barrier for every thread: nothing is pushed any more. Drain our box.
  {
    std::lock_guard<std::mutex> lk(mine.mu);
    for (auto& b : mine.batches)
      for (auto p : b) free(p);
    mine.batches.clear();
  }
  st.SetItemsProcessed(st.iterations() * 64);
  st.counters["remote_frees"] = benchmark::Counter(static_cast<double>(remote), benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_cross_thread_free)->Arg(64)->Arg(1024)->ThreadRange(1, 8)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::AddCustomContext("allocator", wl::allocator_name());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
