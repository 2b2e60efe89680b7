// large: large blocks of 5 to 25 MiB, the buffers of image, compression and database programs.
//
// Each thread keeps a ring of `live` blocks; every iteration frees the oldest block and allocates
// one of a random size in [min_mib, max_mib], then writes one word into every 4 KiB page of it
// (the program uses its buffer, so page faults are part of the cost: an allocator that reuses
// freed memory without returning it to the OS at once saves them, one that keeps it forever pays
// in RSS). Every `realloc_every` iterations the new block is grown with realloc by up to half
// again instead of being written whole at once.
//
// Verifies: before a block is freed, every page's word is checked against the value written.
#include "common.hpp"

namespace {
constexpr size_t kPage = 4096;
void write_pages(char* p, size_t n, uint64_t seed, size_t from = 0) {
  for (size_t off = from; off + 8 <= n; off += kPage) {
    uint64_t v = wl::mix(seed + off);
    memcpy(p + off, &v, 8);
  }
}
bool check_pages(const char* p, size_t n, uint64_t seed) {
  for (size_t off = 0; off + 8 <= n; off += kPage) {
    uint64_t v;
    memcpy(&v, p + off, 8);
    if (v != wl::mix(seed + off)) return false;
  }
  return true;
}
struct Block {
  char* p = nullptr;
  size_t n = 0;
  uint64_t seed = 0;
};
}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const int threads = static_cast<int>(a.num("threads", 1, 1));
  const long iters = a.num("iters", 1000, 8);
  const long live = a.num("live", 4, 2);
  const long lo = a.num("min_mib", 5, 5), hi = a.num("max_mib", 25, 25);
  const long realloc_every = a.num("realloc_every", 4, 2);
  a.done("large [--threads 1] [--iters 1000] [--live 4] [--min_mib 5] [--max_mib 25] [--realloc_every 4] [--smoke]");
  if (threads < 1 || iters < 1 || live < 1 || lo < 1 || hi < lo || realloc_every < 0) wl::usage_error("bad parameters");

  std::atomic<uint64_t> bytes{0};
  double t0 = wl::now();
  wl::run_threads(threads, [&](int t) {
    wl::Rng rng(static_cast<uint64_t>(t) + 5);
    std::vector<Block> ring(static_cast<size_t>(live));
    uint64_t total = 0;
    for (long i = 0; i < iters; i++) {
      Block& b = ring[static_cast<size_t>(i % live)];
      if (b.p) {
        if (!check_pages(b.p, b.n, b.seed)) wl::fail("thread %d: block of %zu bytes changed", t, b.n);
        free(b.p);
      }
      b.n = static_cast<size_t>(rng.range(static_cast<uint64_t>(lo) << 20, static_cast<uint64_t>(hi) << 20));
      b.seed = rng.next();
      if (realloc_every > 0 && i % realloc_every == 0) {
        // Grow: two thirds first, then realloc to the full size; the contents must move along.
        size_t first = b.n / 3 * 2;
        b.p = static_cast<char*>(malloc(first));
        if (!b.p) wl::fail("malloc(%zu) failed", first);
        write_pages(b.p, first, b.seed);
        char* q = static_cast<char*>(realloc(b.p, b.n));
        if (!q) wl::fail("realloc(%zu) failed", b.n);
        b.p = q;
        size_t resume = first < 8 ? 0 : ((first - 8) / kPage + 1) * kPage;  // first page not written
        if (!check_pages(b.p, first, b.seed)) wl::fail("thread %d: realloc lost the contents", t);
        write_pages(b.p, b.n, b.seed, resume);
      } else {
        b.p = static_cast<char*>(malloc(b.n));
        if (!b.p) wl::fail("malloc(%zu) failed", b.n);
        write_pages(b.p, b.n, b.seed);
      }
      total += b.n;
    }
    for (auto& b : ring) {
      if (!b.p) continue;
      if (!check_pages(b.p, b.n, b.seed)) wl::fail("thread %d: block of %zu bytes changed", t, b.n);
      free(b.p);
    }
    bytes += total;
  });
  double t1 = wl::now();
  printf("allocated_mib=%llu\n", (unsigned long long)(bytes.load() >> 20));
  wl::report(t1 - t0);
  return 0;
}
