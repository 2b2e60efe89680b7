// slab_bound: how little memory a size-class (slab) allocator can hold on `glibc-thread`.
//
// Replays, without allocating, the sequence of request sizes one thread of `wl-glibc_bench
// --style thread` makes (same random generator, seed and size table), and follows the live
// blocks of every size class of core/size_classes.hpp. It prints, for that thread:
//
//   requested_peak_kib   the most bytes the program had live at once
//   chunk_peak_kib       the same with each block rounded as glibc does (8 bytes of header,
//                        16-byte granularity, 32 bytes at least): a best-fit heap that packed
//                        its free chunks perfectly would need this much
//   class_peak_kib       the most bytes live at once, each block rounded up to its class
//   slab_peak_kib        the most memory held at once by pages of our page sizes if every class
//                        packed its live blocks into as few pages as possible at every moment
//                        (a page is freed as soon as it could be, the last one resident only as
//                        far as it is carved, in 4 KiB pages): a lower bound for any allocator
//                        that keeps each class in pages of its own, ours included
//   class_max_sum_kib    the sum over classes of each class's own peak: what pages hold when
//                        none empties (blocks freed at random rarely leave a page empty)
//
// The program's footprint under a size-class allocator lies between slab_peak and
// class_max_sum; glibc's (coalescing best fit) follows chunk_peak. docs/performance.md compares
// these with the peak RSS the benchmark measures.
//
//   build/bench/slab-bound [--ops 16000000] [--threads 2] [--working 1024] [--thread 0]
#include <cmath>
#include <cstdio>

#include "core/size_classes.hpp"
#include "workloads/common.hpp"

using nebula::kClassCount;
using nebula::kSliceShift;

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const long ops = a.num("ops", 16000000, 100000);
  const int threads = static_cast<int>(a.num("threads", 2, 2));
  const long working = a.num("working", 1024, 1024);
  const int t = static_cast<int>(a.num("thread", 0, 0));
  a.done("slab-bound [--ops 16000000] [--threads 2] [--working 1024] [--thread 0]");
  if (ops < 1 || threads < 1 || working < 1 || t < 0 || t >= threads) wl::usage_error("bad parameters");

  // The size table of wl-glibc_bench --style thread (bench/workloads/glibc_bench.cpp).
  std::vector<uint32_t> table(8192);
  wl::Rng r0(77);
  for (auto& s : table) s = static_cast<uint32_t>(4.0 * std::exp(r0.unit() * std::log(32768.0 / 4.0)));

  struct Class {
    long live = 0, max = 0, held = 0;
    size_t size = 0, page_bytes = 0, per_page = 0;
  };
  std::vector<Class> cls(kClassCount);
  for (unsigned c = 0; c < kClassCount; ++c) {
    cls[c].size = nebula::class_size_formula(c);
    cls[c].page_bytes = static_cast<size_t>(nebula::page_slices_for_class(c)) << kSliceShift;
    cls[c].per_page = cls[c].page_bytes / cls[c].size;
  }
  auto chunk = [](size_t n) { return n + 8 < 32 ? size_t{32} : (n + 8 + 15) & ~size_t{15}; };
  size_t requested = 0, chunks = 0, rounded = 0, slab = 0;
  size_t requested_peak = 0, chunk_peak = 0, class_peak = 0, slab_peak = 0;
  auto add = [&](size_t n, long delta) {
    if (n < sizeof(wl::Tagged)) n = sizeof(wl::Tagged);  // as tagged_alloc
    Class& k = cls[nebula::size_to_class_formula(n)];
    k.live += delta;
    if (k.live > k.max) k.max = k.live;
    // Full pages, and the last one as far as it is carved (in whole OS pages).
    const long full = k.live / static_cast<long>(k.per_page);
    const long rest = k.live % static_cast<long>(k.per_page) * static_cast<long>(k.size);
    const long held = full * static_cast<long>(k.page_bytes) + ((rest + 4095) & ~4095l);
    slab += held - k.held;
    k.held = held;
    requested += delta * static_cast<long>(n);
    chunks += delta * static_cast<long>(chunk(n));
    rounded += delta * static_cast<long>(k.size);
    if (delta > 0) {
      if (requested > requested_peak) requested_peak = requested;
      if (chunks > chunk_peak) chunk_peak = chunks;
      if (rounded > class_peak) class_peak = rounded;
      if (slab > slab_peak) slab_peak = slab;
    }
  };

  // The random sequence of thread t, as the workload draws it.
  wl::Rng rng(static_cast<uint64_t>(t) + 11);
  std::vector<uint32_t> ws(static_cast<size_t>(working));
  for (auto& n : ws) {
    (void)rng.next();  // the tag
    n = table[rng.below(table.size())];
    add(n, +1);
  }
  const long per = ops / threads;
  for (long i = 0; i < per; i++) {
    size_t k = rng.below(ws.size());
    add(ws[k], -1);
    (void)rng.next();
    ws[k] = table[rng.below(table.size())];
    add(ws[k], +1);
  }
  size_t max_sum = 0;
  for (const Class& k : cls) max_sum += static_cast<size_t>(k.max) * k.size;
  printf("requested_peak_kib=%zu\nchunk_peak_kib=%zu\nclass_peak_kib=%zu\nslab_peak_kib=%zu\nclass_max_sum_kib=%zu\n",
         requested_peak >> 10, chunk_peak >> 10, class_peak >> 10, slab_peak >> 10, max_sum >> 10);
  return 0;
}
