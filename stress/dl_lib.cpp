// stress/dl_lib.cpp: the library that stress-dlopen_churn loads and unloads (built three times,
// STRESS_DL_ID 0, 1, 2). Its constructors allocate (malloc, calloc, new, new[], strdup, C++
// globals with containers), its destructors verify and free all of it; it also makes blocks that
// the program frees after the library is gone, and frees blocks the program made.
//
// It reports to the program through stress_dl_report (found with dlsym in the main program,
// linked with -rdynamic). It is built with -fno-gnu-unique: an STB_GNU_UNIQUE symbol (a static
// local of an inline libstdc++ function, for one) would make the loader keep it loaded forever.
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <new>
#include <string>
#include <vector>

#ifndef STRESS_DL_ID
#define STRESS_DL_ID 0
#endif

namespace {

uint64_t word(uint64_t seed, size_t w) {
  uint64_t x = seed ^ (static_cast<uint64_t>(w) * 0x9E3779B97F4A7C15ull);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return x;
}
void fill(void* p, size_t n, uint64_t seed) {
  auto* b = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(word(seed, i / 8) >> (8 * (i % 8)));
}
bool intact(const void* p, size_t n, uint64_t seed) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != static_cast<uint8_t>(word(seed, i / 8) >> (8 * (i % 8)))) return false;
  return true;
}

using report_fn = void (*)(int id, int event, uint64_t ops, uint64_t errors);
report_fn g_report = nullptr;

struct Item {
  void* p;
  size_t n;
  uint64_t seed;
  int how;  // 0 free, 1 delete, 2 delete[]
};
Item g_items[24];
char* g_dup = nullptr;
uint64_t g_errors_here = 0, g_ops_here = 0;

// C++ globals whose constructors and destructors allocate and free
struct Registry {
  std::map<std::string, std::vector<int>> m;
  Registry() {
    for (int i = 0; i < 50; ++i) m["key-" + std::to_string(i * (STRESS_DL_ID + 1))] = std::vector<int>(i * 3 + 1, i);
  }
  ~Registry() {
    int i = 0;
    for (auto& kv : m) {
      if (kv.second.empty()) ++g_errors_here;
      ++i;
    }
    if (i != 50) ++g_errors_here;
  }
};
Registry g_registry;
#define STRESS_STR2(x) #x
#define STRESS_STR(x) STRESS_STR2(x)
const char kName[] = "a string that the constructor copies with strdup, in library stress-dl-" STRESS_STR(STRESS_DL_ID);

__attribute__((constructor)) void on_load() {
  void* s = dlsym(RTLD_DEFAULT, "stress_dl_report");
  memcpy(&g_report, &s, sizeof s);
  static const size_t sizes[] = {16, 24, 100, 1000, 4096, 8192, 20000, 100000, 300000, 1 << 20, 3 << 20, 5 << 20};
  for (int i = 0; i < 24; ++i) {
    size_t n = sizes[i % 12] + static_cast<size_t>(i);
    Item& it = g_items[i];
    it.n = n;
    it.how = i % 4 == 1 ? 1 : i % 4 == 2 ? 2 : 0;
    if (it.how == 1) it.p = ::operator new(n);
    else if (it.how == 2) it.p = new char[n];
    else it.p = i % 4 == 3 ? calloc(1, n) : malloc(n);
    if (it.p == nullptr) {
      ++g_errors_here;
      continue;
    }
    it.seed = reinterpret_cast<uintptr_t>(it.p) * 31 + n + STRESS_DL_ID;
    fill(it.p, n, it.seed);
  }
  g_dup = strdup(kName);
  g_ops_here += 25;
  if (g_report) g_report(STRESS_DL_ID, 0, 0, 0);
}

__attribute__((destructor)) void on_unload() {
  for (Item& it : g_items) {
    if (it.p == nullptr) continue;
    if (!intact(it.p, it.n, it.seed)) ++g_errors_here;
    if (it.how == 1) ::operator delete(it.p);
    else if (it.how == 2) delete[] static_cast<char*>(it.p);
    else free(it.p);
    it.p = nullptr;
  }
  if (g_dup == nullptr || strcmp(kName, g_dup) != 0) ++g_errors_here;
  free(g_dup);
  g_ops_here += 25;
  if (g_report) g_report(STRESS_DL_ID, 1, g_ops_here, g_errors_here);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int stress_dl_id(void) { return STRESS_DL_ID; }

// A block made here and freed by the program, perhaps after this library is unloaded.
__attribute__((visibility("default"))) void* stress_dl_make(size_t n, uint64_t seed) {
  void* p = (n & 1) ? malloc(n) : calloc(1, n);
  if (p != nullptr) fill(p, n, seed);
  return p;
}

// Verify and free a block the program made; 0 if it was intact.
__attribute__((visibility("default"))) int stress_dl_take(void* p, size_t n, uint64_t seed) {
  int bad = intact(p, n, seed) ? 0 : 1;
  free(p);
  return bad;
}

// Some allocation work inside the library: containers that grow and are dropped.
__attribute__((visibility("default"))) uint64_t stress_dl_work(unsigned rounds) {
  uint64_t ops = 0;
  for (unsigned r = 0; r < rounds; ++r) {
    std::vector<std::string> v;
    for (unsigned i = 0; i < 64; ++i) {
      v.emplace_back(static_cast<size_t>(16 + (i * 37 + r) % 600), static_cast<char>('a' + i % 26));
      ++ops;
    }
    std::map<int, std::string> m;
    for (unsigned i = 0; i < 32; ++i) m[static_cast<int>(i)] = v[i];
    for (unsigned i = 0; i < 32; ++i)
      if (m[static_cast<int>(i)] != v[i]) return ~uint64_t{0};
  }
  return ops;
}

}  // extern "C"
