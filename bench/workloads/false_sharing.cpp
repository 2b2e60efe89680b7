// false_sharing: allocator-induced false sharing, modelled on Hoard's cache-thrash and
// cache-scratch benchmarks (Berger et al., ASPLOS 2000).
//
//   --mode thrash   active false sharing: every thread repeatedly allocates a small object,
//                   writes every byte of it `writes` times, and frees it. An allocator that
//                   carves the threads' objects out of one cache line makes the threads fight
//                   over that line.
//   --mode scratch  passive false sharing: the main thread allocates one small object per thread
//                   (neighbours in memory) and hands one to each thread, which frees it at once
//                   and then runs the thrash loop. An allocator that gives the freed object back
//                   to the thread that freed it (instead of to its owner) puts the threads' new
//                   objects on the shared line.
//
// Verifies: after its writes, every byte of each object holds the expected count, and each
// thread's sum over all its objects matches the closed form.
#include "common.hpp"

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const std::string mode = a.str("mode", "thrash");
  const int threads = static_cast<int>(a.num("threads", 2, 2));
  const long iters = a.num("iters", 1000, 20);
  const long writes = a.num("writes", 150000, 500);
  const long objsize = a.num("objsize", 8, 8);
  a.done("false_sharing [--mode thrash|scratch] [--threads 2] [--iters 1000] [--writes 150000] [--objsize 8] [--smoke]");
  if (mode != "thrash" && mode != "scratch") wl::usage_error("--mode must be thrash or scratch");
  if (threads < 1 || iters < 1 || writes < 1 || objsize < 1) wl::usage_error("bad parameters");

  // scratch: the objects handed out, allocated together by the main thread.
  std::vector<char*> handed(static_cast<size_t>(threads), nullptr);
  if (mode == "scratch")
    for (auto& p : handed) p = static_cast<char*>(malloc(static_cast<size_t>(objsize)));

  std::vector<uint64_t> sums(static_cast<size_t>(threads) * 8, 0);  // padded: one line each
  double t0 = wl::now();
  wl::run_threads(threads, [&](int t) {
    if (handed[static_cast<size_t>(t)]) free(handed[static_cast<size_t>(t)]);
    uint64_t sum = 0;
    for (long i = 0; i < iters; i++) {
      auto* p = static_cast<volatile unsigned char*>(malloc(static_cast<size_t>(objsize)));
      if (!p) wl::fail("malloc failed");
      for (long k = 0; k < objsize; k++) p[k] = static_cast<unsigned char>(i);
      for (long j = 0; j < writes; j++)
        for (long k = 0; k < objsize; k++) p[k] = static_cast<unsigned char>(p[k] + 1);
      const unsigned char want = static_cast<unsigned char>(i + writes);
      for (long k = 0; k < objsize; k++) {
        if (p[k] != want) wl::fail("thread %d object %ld byte %ld: %u, expected %u", t, i, k, p[k], want);
        sum += p[k];
      }
      free(const_cast<unsigned char*>(p));
    }
    sums[static_cast<size_t>(t) * 8] = sum;
  });
  double t1 = wl::now();
  uint64_t expect = 0;
  for (long i = 0; i < iters; i++) expect += static_cast<unsigned char>(i + writes) * static_cast<uint64_t>(objsize);
  for (int t = 0; t < threads; t++)
    if (sums[static_cast<size_t>(t) * 8] != expect) wl::fail("thread %d: checksum mismatch", t);
  printf("mode=%s\n", mode.c_str());
  wl::report(t1 - t0);
  return 0;
}
