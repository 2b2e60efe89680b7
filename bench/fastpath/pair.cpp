// bench/fastpath/pair.cpp: one allocation and one free in steady state, for instruction counts.
//
// Keeps 1000 blocks of one size live and, each iteration, frees one chosen at random and
// allocates its replacement: the pattern of a real program's small objects. (A loop that frees
// its only block measures page retirement, not the fast path.)
//
//   pair MODE SIZE ITERATIONS
//     MODE: malloc | calloc | new | sized-delete | aligned (posix_memalign 64)
//
// Run under `valgrind --tool=callgrind` with ITERATIONS 0 and N: (Ir(N) - Ir(0)) / N is the
// cost of one iteration, allocator plus a fixed loop overhead (the same for every allocator).
// bench/fast-path.sh does that and compares with bench/fast_path.golden.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace {
constexpr int kLive = 1000;
void* g_live[kLive];
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "malloc";
  size_t size = argc > 2 ? strtoul(argv[2], nullptr, 10) : 32;
  long iters = argc > 3 ? strtol(argv[3], nullptr, 10) : 1000000;
  int m = strcmp(mode, "calloc") == 0 ? 1 : strcmp(mode, "new") == 0 ? 2 : strcmp(mode, "sized-delete") == 0 ? 3
        : strcmp(mode, "aligned") == 0 ? 4 : 0;
  auto make = [&]() -> void* {
    switch (m) {
      case 1: return calloc(1, size);
      case 2: case 3: return ::operator new(size);
      case 4: { void* p = nullptr; return posix_memalign(&p, 64, size) == 0 ? p : nullptr; }
      default: return malloc(size);
    }
  };
  auto drop = [&](void* p) {
    switch (m) {
      case 2: ::operator delete(p); break;
      case 3: ::operator delete(p, size); break;
      default: free(p);
    }
  };
  for (auto& p : g_live) p = make();
  uint64_t x = 88172645463325252ull;
  for (long it = 0; it < iters; it++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    unsigned i = static_cast<unsigned>(x % kLive);
    drop(g_live[i]);
    g_live[i] = make();
    *static_cast<volatile char*>(g_live[i]) = 1;
  }
  uintptr_t sum = 0;
  for (auto p : g_live) sum += reinterpret_cast<uintptr_t>(p) & 1;
  for (auto p : g_live) drop(p);
  return static_cast<int>(sum);
}
