// strbuild: a realloc-heavy string builder, the pattern of naive C string concatenation (log
// lines, JSON and SQL text, `s = realloc(s, len + k + 1); strcat(...)`).
//
// `strings` strings are built at once; each step appends 1..`chunk` bytes to a random one with
// realloc to the exact new size (no geometric growth in the program, so the allocator's realloc
// decides whether to grow in place, move within a size class, or copy). A string that reaches
// `maxlen` is checked and freed and a new one starts, so sizes sweep from a few bytes through the
// small, medium and large classes and blocks of every size are interleaved in memory.
//
// Verifies: a running FNV-1a hash of what was appended to each string is compared with the hash
// of its contents whenever it is retired and at the end; the total appended length must match.
#include "common.hpp"

namespace {
struct Str {
  char* p = nullptr;
  size_t len = 0;
  uint64_t hash = 14695981039346656037ull;
};
uint64_t fnv(uint64_t h, const char* s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= static_cast<unsigned char>(s[i]);
    h *= 1099511628211ull;
  }
  return h;
}
void verify(const Str& s) {
  if (strlen(s.p) != s.len) wl::fail("string of %zu bytes has length %zu", s.len, strlen(s.p));
  if (fnv(14695981039346656037ull, s.p, s.len) != s.hash) wl::fail("string of %zu bytes: contents changed", s.len);
}
}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const long strings = a.num("strings", 1000, 50);
  const long appends = a.num("appends", 3000000, 20000);
  const long chunk = a.num("chunk", 48, 48);
  const long maxlen = a.num("maxlen", 256 * 1024, 16 * 1024);
  a.done("strbuild [--strings 1000] [--appends 3000000] [--chunk 48] [--maxlen 262144] [--smoke]");
  if (strings < 1 || appends < 1 || chunk < 1 || maxlen < chunk) wl::usage_error("bad parameters");

  std::vector<Str> S(static_cast<size_t>(strings));
  wl::Rng rng(2024);
  char piece[256];
  uint64_t total = 0, retired = 0;
  double t0 = wl::now();
  for (long i = 0; i < appends; i++) {
    Str& s = S[rng.below(S.size())];
    size_t k = 1 + rng.below(static_cast<uint64_t>(chunk < 255 ? chunk : 255));
    uint64_t v = rng.next();
    for (size_t j = 0; j < k; j++) piece[j] = static_cast<char>('a' + (v >> (j % 8 * 8)) % 26 + (j & 1));
    char* q = static_cast<char*>(realloc(s.p, s.len + k + 1));
    if (!q) wl::fail("realloc(%zu) failed", s.len + k + 1);
    s.p = q;
    memcpy(s.p + s.len, piece, k);
    s.len += k;
    s.p[s.len] = 0;
    s.hash = fnv(s.hash, piece, k);
    total += k;
    if (s.len >= static_cast<size_t>(maxlen)) {
      verify(s);
      retired += s.len;
      free(s.p);
      s = Str{};
    }
  }
  uint64_t left = 0;
  for (auto& s : S) {
    if (!s.p) continue;
    verify(s);
    left += s.len;
    free(s.p);
  }
  double t1 = wl::now();
  if (retired + left != total) wl::fail("appended %llu bytes, found %llu", (unsigned long long)total,
                                        (unsigned long long)(retired + left));
  printf("appended_mib=%.1f\n", static_cast<double>(total) / 1048576.0);
  wl::report(t1 - t0);
  return 0;
}
