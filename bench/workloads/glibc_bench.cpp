// glibc_bench: the loops of glibc's own malloc benchmarks (benchtests/bench-malloc-simple.c and
// benchtests/bench-malloc-thread.c), written from their descriptions.
//
//   --style simple   allocate n blocks of one size, then free them all, repeated; for sizes
//                    16 B .. 4 KiB and batches of 25 .. 1600. It runs twice: first in the main
//                    thread while the process is single-threaded, then in a second thread (glibc
//                    takes different paths in each case).
//   --style thread   each thread keeps a working set of 1024 blocks and, `ops` times, frees a
//                    random one and allocates a replacement of a random size from 4 B to 32 KiB,
//                    with a probability inversely proportional to the size.
//
// Verifies: a word (simple) or the tag and contents (thread) written into each block are checked
// when the block is freed; a checksum over all blocks must match.
#include "common.hpp"

namespace {

uint64_t simple_pass(long ops) {
  const size_t sizes[] = {16, 64, 256, 1024, 4096};
  const long batches[] = {25, 100, 400, 1600};
  const long configs = 5 * 4;
  std::vector<uint64_t*> arr(1600);
  uint64_t sum = 0;
  for (size_t size : sizes) {
    for (long n : batches) {
      long iters = ops / configs / n;
      for (long j = 0; j < iters; j++) {
        for (long i = 0; i < n; i++) {
          auto* p = static_cast<uint64_t*>(malloc(size));
          if (!p) wl::fail("malloc failed");
          *p = static_cast<uint64_t>(i) * size + static_cast<uint64_t>(j);
          arr[static_cast<size_t>(i)] = p;
        }
        for (long i = 0; i < n; i++) {
          uint64_t* p = arr[static_cast<size_t>(i)];
          if (*p != static_cast<uint64_t>(i) * size + static_cast<uint64_t>(j))
            wl::fail("size %zu batch %ld: block %ld changed", size, n, i);
          sum += *p;
          free(p);
        }
      }
    }
  }
  return sum;
}

uint64_t simple_expect(long ops) {
  const size_t sizes[] = {16, 64, 256, 1024, 4096};
  const long batches[] = {25, 100, 400, 1600};
  uint64_t sum = 0;
  for (size_t size : sizes)
    for (long n : batches) {
      long iters = ops / 20 / n;
      for (long j = 0; j < iters; j++)
        for (long i = 0; i < n; i++) sum += static_cast<uint64_t>(i) * size + static_cast<uint64_t>(j);
    }
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const std::string style = a.str("style", "simple");
  const int threads = static_cast<int>(a.num("threads", 2, 2));
  const long ops = a.num("ops", style == "simple" ? 8000000 : 16000000, 200000);
  const long working = a.num("working", 1024, 1024);
  a.done("glibc_bench --style simple [--ops 8000000] [--smoke]\n"
         "glibc_bench --style thread [--threads 2] [--ops 16000000] [--working 1024] [--smoke]");
  if (ops < 1 || threads < 1 || working < 1) wl::usage_error("bad parameters");

  double t0 = wl::now(), t1;
  if (style == "simple") {
    // Half the operations single-threaded, half in a thread.
    uint64_t s1 = simple_pass(ops / 2), s2 = 0;
    std::thread th([&] { s2 = simple_pass(ops / 2); });
    th.join();
    t1 = wl::now();
    uint64_t want = simple_expect(ops / 2);
    if (s1 != want || s2 != want) wl::fail("checksum mismatch");
  } else if (style == "thread") {
    // Sizes with density 1/x between 4 B and 32 KiB (log-uniform), precomputed like glibc's table.
    std::vector<uint32_t> table(8192);
    wl::Rng r0(77);
    for (auto& s : table) {
      double u = r0.unit();
      s = static_cast<uint32_t>(4.0 * __builtin_exp(u * __builtin_log(32768.0 / 4.0)));
    }
    std::atomic<uint64_t> in{0}, out{0};
    wl::run_threads(threads, [&](int t) {
      wl::Rng rng(static_cast<uint64_t>(t) + 11);
      std::vector<void*> ws(static_cast<size_t>(working));
      uint64_t i_sum = 0, o_sum = 0;
      for (auto& p : ws) {
        uint32_t tag = static_cast<uint32_t>(rng.next());
        p = wl::tagged_alloc(table[rng.below(table.size())], tag);
        i_sum += tag;
      }
      const long per = ops / threads;
      for (long i = 0; i < per; i++) {
        size_t k = rng.below(ws.size());
        o_sum += wl::tagged_free(ws[k]);
        uint32_t tag = static_cast<uint32_t>(rng.next());
        ws[k] = wl::tagged_alloc(table[rng.below(table.size())], tag);
        i_sum += tag;
      }
      for (auto* p : ws) o_sum += wl::tagged_free(p);
      in += i_sum;
      out += o_sum;
    });
    t1 = wl::now();
    if (in.load() != out.load()) wl::fail("tag sums differ");
  } else {
    wl::usage_error("--style must be simple or thread");
  }
  printf("style=%s\n", style.c_str());
  wl::report(t1 - t0);
  return 0;
}
