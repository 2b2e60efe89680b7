// bench/workloads/common.hpp: what every workload program shares.
//
// A workload is an ordinary program linked against glibc only; the driver (bench/run.py) runs it
// with LD_PRELOAD set to the allocator under test. Every program:
//   - takes its size parameters as `--name VALUE` (or `--name=VALUE`), `--threads N` where it has
//     threads, and `--smoke` (tiny sizes, for the CI smoke run);
//   - checks its own result (block contents, checksums, structure invariants) and exits 1 with
//     one line on stderr naming the mismatch;
//   - prints `allocator=NAME` (the malloc library mapped into the process, so the driver can
//     tell a preload that did not take effect), `time_s=SECONDS` (the timed part) and
//     `peak_rss_kib=KIB` (VmHWM), plus any workload-specific `key=value` lines.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace wl {

[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("VERIFY FAILED: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stdout);
  _exit(1);
}

// A command-line mistake: exit status 2, so it is not mistaken for a verification failure.
[[noreturn]] inline void usage_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void usage_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("usage error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

// ---- command line -------------------------------------------------------------------------
class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) usage_error("unexpected argument '%s'", a.c_str());
      a = a.substr(2);
      auto eq = a.find('=');
      if (eq != std::string::npos) {
        kv_.push_back({a.substr(0, eq), a.substr(eq + 1)});
      } else if (a == "smoke" || a == "help") {
        kv_.push_back({a, "1"});
      } else if (i + 1 < argc) {
        kv_.push_back({a, argv[++i]});
      } else {
        usage_error("option --%s needs a value", a.c_str());
      }
    }
    smoke = has("smoke");
  }
  bool has(const char* k) const {
    for (auto& [key, v] : kv_) if (key == k) return true;
    return false;
  }
  // Integer option; `full` is the default, `tiny` the default under --smoke.
  long num(const char* k, long full, long tiny) {
    known_.push_back(k);
    for (auto& [key, v] : kv_) {
      if (key == k) {
        char* end = nullptr;
        long x = strtol(v.c_str(), &end, 10);
        if (end == v.c_str() || *end != 0) usage_error("--%s: not an integer: %s", k, v.c_str());
        return x;
      }
    }
    return smoke ? tiny : full;
  }
  std::string str(const char* k, const char* dflt) {
    known_.push_back(k);
    for (auto& [key, v] : kv_) if (key == k) return v;
    return dflt;
  }
  // Call after reading every option: rejects unknown names (a typo must not silently run the
  // default sizes); --help prints the usage.
  void done(const char* usage) {
    if (has("help")) { printf("%s\n", usage); exit(0); }
    for (auto& [key, v] : kv_) {
      if (key == "smoke" || key == "help") continue;
      bool ok = false;
      for (auto& k : known_) if (k == key) ok = true;
      if (!ok) usage_error("unknown option --%s\n%s", key.c_str(), usage);
    }
  }
  bool smoke = false;

 private:
  std::vector<std::pair<std::string, std::string>> kv_;
  std::vector<std::string> known_;
};

// ---- time, randomness -----------------------------------------------------------------------
inline double now() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// xoshiro-style generator small enough to live in a register; seeded per thread.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {
    if (s == 0) s = 1;
  }
  uint64_t next() {  // xorshift64*
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  uint64_t range(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }  // inclusive
  double unit() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
};

inline uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// ---- block contents -------------------------------------------------------------------------
// A block of n bytes carries a tag: the first min(n, 64) bytes and the last 8 are written from
// it, so an allocator that hands out overlapping blocks, or loses a block's contents, fails the
// check when the block is freed. Sizes below 8 write what fits.
inline void fill(void* p, size_t n, uint64_t tag) {
  auto* b = static_cast<unsigned char*>(p);
  uint64_t v = mix(tag);
  size_t head = n < 64 ? n : 64;
  for (size_t i = 0; i < head; i++) b[i] = static_cast<unsigned char>(v >> ((i & 7) * 8)) ^ static_cast<unsigned char>(i);
  if (n >= 72) memcpy(b + n - 8, &v, 8);
}
inline bool check(const void* p, size_t n, uint64_t tag) {
  auto* b = static_cast<const unsigned char*>(p);
  uint64_t v = mix(tag);
  size_t head = n < 64 ? n : 64;
  for (size_t i = 0; i < head; i++)
    if (b[i] != (static_cast<unsigned char>(v >> ((i & 7) * 8)) ^ static_cast<unsigned char>(i))) return false;
  if (n >= 72) {
    uint64_t w;
    memcpy(&w, b + n - 8, 8);
    if (w != v) return false;
  }
  return true;
}

// A block that remembers its own size and tag (for workloads that pass blocks between threads
// and check them where they die). Minimum size 16.
struct Tagged {
  uint32_t size;
  uint32_t tag;
};
inline void* tagged_alloc(size_t n, uint32_t tag) {
  if (n < sizeof(Tagged)) n = sizeof(Tagged);
  auto* t = static_cast<Tagged*>(malloc(n));
  if (!t) fail("malloc(%zu) returned NULL", n);
  t->size = static_cast<uint32_t>(n);
  t->tag = tag;
  fill(t + 1, n - sizeof(Tagged), tag);
  return t;
}
// Checks and frees; returns the tag.
inline uint32_t tagged_free(void* p) {
  auto* t = static_cast<Tagged*>(p);
  uint32_t n = t->size, tag = t->tag;
  if (n < sizeof(Tagged) || n > (1u << 30)) fail("tagged block %p: corrupt size %u", p, n);
  if (!check(t + 1, n - sizeof(Tagged), tag)) fail("tagged block %p (%u bytes, tag %u): contents changed", p, n, tag);
  free(p);
  return tag;
}

// ---- process facts --------------------------------------------------------------------------
// Reads a small /proc file into buf with plain syscalls (no stdio, no malloc).
inline size_t read_proc(const char* path, char* buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t len = 0;
  for (;;) {
    ssize_t r = read(fd, buf + len, cap - 1 - len);
    if (r <= 0) break;
    len += static_cast<size_t>(r);
    if (len + 1 >= cap) break;
  }
  close(fd);
  buf[len] = 0;
  return len;
}

// A field of /proc/self/status in KiB: "VmRSS" (resident now), "VmHWM" (peak resident).
inline long status_kib(const char* field) {
  static char buf[8192];
  read_proc("/proc/self/status", buf, sizeof buf);
  char key[32];
  snprintf(key, sizeof key, "\n%s:", field);
  const char* p = strstr(buf, key);
  return p ? strtol(p + strlen(key), nullptr, 10) : -1;
}
inline long rss_kib() { return status_kib("VmRSS"); }

// Which malloc library is mapped: the first known name found in /proc/self/maps.
inline const char* allocator_name() {
  static char buf[1 << 20];
  read_proc("/proc/self/maps", buf, sizeof buf);
  struct { const char* needle; const char* name; } known[] = {
      {"libnebulamem", "nebula"}, {"libjemalloc", "jemalloc"}, {"libmimalloc", "mimalloc"},
      {"libtcmalloc", "tcmalloc"}, {"libhoard", "hoard"}, {"librpmalloc", "rpmalloc"},
      {"libsnmallocshim", "snmalloc"}, {"libceiling", "ceiling"}};
  for (auto& k : known) if (strstr(buf, k.needle)) return k.name;
  return "glibc";
}

// The lines the driver parses. Call once at the end, after verification passed.
// peak_rss_kib is VmHWM, the peak resident set of this program's own address space. (The
// ru_maxrss that wait4 returns also counts the parent's resident set at the moment of exec,
// since Linux keeps the larger of the two, so under a Python driver it never reads below the
// driver's ~17 MiB; the driver records both.)
inline void report(double seconds) {
  printf("allocator=%s\n", allocator_name());
  printf("peak_rss_kib=%ld\n", status_kib("VmHWM"));
  printf("time_s=%.6f\n", seconds);
  fflush(stdout);
}

// Runs fn(thread_index) on n threads and joins them.
template <class F>
void run_threads(int n, F fn) {
  std::vector<std::thread> ts;
  ts.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; i++) ts.emplace_back(fn, i);
  for (auto& t : ts) t.join();
}

}  // namespace wl
