// stress/common.hpp: what every stress program shares: the command line (--threads, --seconds,
// --iters, --scale, --smoke, --require-active, --seed), the content patterns, block records,
// size pickers over the allocator's tiers, the error counter and the closing report.
//
// The programs link glibc only and run under LD_PRELOAD=libnebulamem.so (meson suite 'stress',
// `./nebulamem stress`). They also run without it, against glibc, which is how a test is checked
// against a reference allocator: `--require-active` (set by meson and by ./nebulamem stress) is
// what makes a run without the library fail.
//
// Content checks: every block is filled with a pattern derived from its address, its size and a
// per-block tag (pattern_seed), and verified before it is freed or reallocated; a wrong byte is
// counted as an error (the first few are printed with the block, the offset and both values).
// The closing lines are
//   <name>: <ops> operations, <errors> errors (<threads> threads, <seconds> s) [extra figures]
//   RESULT name=<name> ops=<ops> errors=<errors> threads=<threads> seconds=<s> [key=value...]
// and the exit status is 0 only when errors == 0.
#pragma once

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace stress {

inline constexpr size_t KiB = 1024;
inline constexpr size_t MiB = 1024 * 1024;

// The allocator's tiers (docs/design.md): small <= 8 KiB, medium <= 128 KiB, large <= 2 MiB,
// huge above.
enum Tier : unsigned { kSmall, kMedium, kLarge, kHuge, kTierCount };
inline const char* tier_name(unsigned t) {
  static const char* names[] = {"small", "medium", "large", "huge"};
  return t < kTierCount ? names[t] : "?";
}
inline unsigned tier_of(size_t n) {
  return n <= 8 * KiB ? kSmall : n <= 128 * KiB ? kMedium : n <= 2 * MiB ? kLarge : kHuge;
}

// ---- options -------------------------------------------------------------------------------
struct Options {
  const char* name = "stress";
  unsigned threads = 4;
  double seconds = 10;       // 0: no time limit (then iters bounds the run; --iters alone sets 0)
  uint64_t iters = 0;        // per thread (or per program, as the program says); 0: no limit
  double scale = 1.0;        // multiplies working-set sizes and counts
  bool smoke = false;        // short, small run for the test suite
  bool require_active = false;
  uint64_t seed = 0x5eed;
  bool quiet = false;
  size_t huge_max = 64 * MiB;  // largest block a program asks for (--max-size)
};

inline size_t parse_size(const char* s) {
  char* end = nullptr;
  double v = strtod(s, &end);
  size_t mul = 1;
  if (end && *end) {
    switch (*end) {
      case 'k': case 'K': mul = KiB; break;
      case 'm': case 'M': mul = MiB; break;
      case 'g': case 'G': mul = 1024 * MiB; break;
      default: break;
    }
  }
  return static_cast<size_t>(v * static_cast<double>(mul));
}

// The common command line. `about` is the program's opening paragraph (printed by --help).
// Defaults come from `d`; --smoke applies the program's smoke values `smoke` (threads, seconds,
// iters, scale) before the other options are read, so `--smoke --threads 8` works.
inline Options parse_options(int argc, char** argv, const char* about, Options d, Options smoke) {
  Options o = d;
  for (int i = 1; i < argc; ++i)
    if (strcmp(argv[i], "--smoke") == 0) {
      smoke.name = d.name;
      smoke.smoke = true;
      o = smoke;
    }
  bool seconds_given = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      size_t l = strlen(flag);
      if (strncmp(a, flag, l) == 0 && a[l] == '=') return a + l + 1;
      if (strcmp(a, flag) == 0 && i + 1 < argc) return argv[++i];
      return nullptr;
    };
    const char* v;
    if (strcmp(a, "--smoke") == 0) continue;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      printf("%s\n\n%s\n\noptions: --threads N  --seconds S  --iters N  --scale F  --smoke  "
             "--max-size SIZE  --seed N  --require-active  --quiet\n",
             o.name, about);
      exit(0);
    }
    if ((v = value("--threads"))) o.threads = static_cast<unsigned>(strtoul(v, nullptr, 10));
    else if ((v = value("--seconds"))) {
      o.seconds = strtod(v, nullptr);
      seconds_given = true;
    }
    else if ((v = value("--iters"))) o.iters = strtoull(v, nullptr, 10);
    else if ((v = value("--scale"))) o.scale = strtod(v, nullptr);
    else if ((v = value("--seed"))) o.seed = strtoull(v, nullptr, 0);
    else if ((v = value("--max-size"))) o.huge_max = parse_size(v);
    else if (strcmp(a, "--require-active") == 0) o.require_active = true;
    else if (strcmp(a, "--quiet") == 0) o.quiet = true;
    else {
      fprintf(stderr, "%s: unknown option %s (try --help)\n", o.name, a);
      exit(2);
    }
  }
  if (o.iters != 0 && !seconds_given) o.seconds = 0;   // --iters alone: no time limit
  if (o.threads == 0) o.threads = 1;
  if (o.scale <= 0) o.scale = 1;
  if (o.huge_max < 4 * MiB) o.huge_max = 4 * MiB;
  return o;
}

// parse_options with the defaults most programs take: `name`, and for --smoke `smoke_threads`
// threads for `smoke_seconds` seconds.
inline Options parse_standard(int argc, char** argv, const char* about, const char* name,
                              double smoke_seconds = 4, unsigned smoke_threads = 4) {
  Options d;
  d.name = name;
  Options smoke = d;
  smoke.threads = smoke_threads;
  smoke.seconds = smoke_seconds;
  return parse_options(argc, argv, about, d, smoke);
}

// Run fn(sh, t) on threads t = 0 .. n-1 and wait for all of them.
template <typename S, typename F>
void run_workers(S* sh, unsigned n, F fn) {
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < n; ++t) ts.emplace_back(fn, sh, t);
  for (auto& t : ts) t.join();
}

// ---- the allocator in charge -----------------------------------------------------------------
// The nebula_mem_ API is looked up at run time (the programs do not link the library).
template <class F>
inline F nebula_fn(const char* name) {
  void* s = dlsym(RTLD_DEFAULT, name);
  F f;
  memcpy(&f, &s, sizeof f);
  return f;
}
inline bool nebula_active() {
  auto f = nebula_fn<int (*)()>("nebula_mem_is_active");
  return f != nullptr && f() == 1;
}

// ---- random numbers (xorshift64*) -------------------------------------------------------------
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {
    if (s == 0) s = 1;
  }
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  size_t range(size_t lo, size_t hi) { return lo + static_cast<size_t>(below(hi - lo + 1)); }
  bool chance(unsigned percent) { return below(100) < percent; }
};

// ---- patterns ----------------------------------------------------------------------------------
// Byte i of a block with seed s is byte i%8 of pattern_word(s, i/8). The seed mixes the block's
// address, its size and a tag, so a block that shows up at another address, or a stale copy of
// another block, does not pass.
inline uint64_t pattern_seed(const void* p, size_t n, uint64_t tag = 0) {
  uint64_t x = reinterpret_cast<uintptr_t>(p) * 0x9E3779B97F4A7C15ull ^ n * 0xC2B2AE3D27D4EB4Full ^
               tag * 0x165667B19E3779F9ull;
  x ^= x >> 31;
  return x | 1;
}
inline uint64_t pattern_word(uint64_t seed, size_t w) {
  uint64_t x = seed ^ (static_cast<uint64_t>(w) * 0x9E3779B97F4A7C15ull);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return x;
}
inline uint8_t pattern_byte(uint64_t seed, size_t i) {
  return static_cast<uint8_t>(pattern_word(seed, i / 8) >> (8 * (i % 8)));
}
inline void fill(void* p, size_t n, uint64_t seed) {
  auto* b = static_cast<uint8_t*>(p);
  size_t nw = n / 8;
  if ((reinterpret_cast<uintptr_t>(p) & 7) == 0) {
    auto* w = static_cast<uint64_t*>(p);
    for (size_t i = 0; i < nw; ++i) w[i] = pattern_word(seed, i);
  } else {
    for (size_t i = 0; i < nw; ++i) {
      uint64_t v = pattern_word(seed, i);
      memcpy(b + i * 8, &v, 8);
    }
  }
  for (size_t i = nw * 8; i < n; ++i) b[i] = pattern_byte(seed, i);
}
inline constexpr size_t kIntact = static_cast<size_t>(-1);
// Index of the first wrong byte, or kIntact.
inline size_t verify(const void* p, size_t n, uint64_t seed) {
  const auto* b = static_cast<const uint8_t*>(p);
  size_t nw = n / 8;
  for (size_t i = 0; i < nw; ++i) {
    uint64_t v;
    memcpy(&v, b + i * 8, 8);
    if (v != pattern_word(seed, i)) {
      for (size_t k = i * 8; k < i * 8 + 8; ++k)
        if (b[k] != pattern_byte(seed, k)) return k;
    }
  }
  for (size_t i = nw * 8; i < n; ++i)
    if (b[i] != pattern_byte(seed, i)) return i;
  return kIntact;
}
// Index of the first nonzero byte, or kIntact.
inline size_t find_nonzero(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    memcpy(&v, b + i, 8);
    if (v != 0) break;
  }
  for (; i < n; ++i)
    if (b[i] != 0) return i;
  return kIntact;
}

// ---- errors ------------------------------------------------------------------------------------
inline std::atomic<uint64_t> g_errors{0};

// Count one error; print the first 20 (printf allocates; that is fine, the allocator under
// test is what we are checking, and the message is what matters).
__attribute__((format(printf, 1, 2))) inline void error(const char* fmt, ...) {
  uint64_t k = g_errors.fetch_add(1, std::memory_order_relaxed);
  if (k >= 20) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "ERROR: %s\n", buf);
  if (k == 19) fprintf(stderr, "ERROR: (further errors are counted, not printed)\n");
}

// ---- a block and its record --------------------------------------------------------------------
// How a block must be released: the API that made it decides.
enum class Via : uint8_t { kFree, kDelete, kDeleteArray, kDeleteAligned, kDeleteArrayAligned };

struct Block {
  void* p = nullptr;
  size_t n = 0;
  uint64_t seed = 0;
  size_t align = 0;   // 0: the default alignment
  Via via = Via::kFree;
};

// Fill a fresh block and record it.
inline Block make_block(void* p, size_t n, uint64_t tag = 0, size_t align = 0, Via via = Via::kFree) {
  Block b;
  b.p = p;
  b.n = n;
  b.seed = pattern_seed(p, n, tag);
  b.align = align;
  b.via = via;
  fill(p, n, b.seed);
  return b;
}

// Verify a block; count and describe a mismatch. Returns true when intact.
inline bool check(const Block& b, const char* where) {
  if (b.p == nullptr) return true;
  size_t bad = verify(b.p, b.n, b.seed);
  if (bad == kIntact) return true;
  error("%s: block %p of %zu bytes damaged at offset %zu: byte 0x%02x, expected 0x%02x", where, b.p, b.n,
        bad, static_cast<const uint8_t*>(b.p)[bad], pattern_byte(b.seed, bad));
  return false;
}

// Verify, then release a block the way its API requires, and clear the record.
inline bool release(Block& b, const char* where) {
  bool ok = check(b, where);
  switch (b.via) {
    case Via::kFree: free(b.p); break;
    case Via::kDelete: ::operator delete(b.p); break;
    case Via::kDeleteArray: ::operator delete[](b.p); break;
    case Via::kDeleteAligned: ::operator delete(b.p, std::align_val_t(b.align)); break;
    case Via::kDeleteArrayAligned: ::operator delete[](b.p, std::align_val_t(b.align)); break;
  }
  b = Block{};
  return ok;
}

// ---- sizes -------------------------------------------------------------------------------------
// A size in the given tier. Small sizes lean to the bottom (most programs' mix); huge sizes go
// up to opts.huge_max.
inline size_t size_in_tier(Rng& r, unsigned tier, size_t huge_max) {
  switch (tier) {
    case kSmall: {
      unsigned k = static_cast<unsigned>(r.below(100));
      if (k < 60) return r.range(16, 256);
      if (k < 90) return r.range(257, 2048);
      return r.range(2049, 8 * KiB);
    }
    case kMedium: return r.range(8 * KiB + 1, 128 * KiB);
    case kLarge: return r.range(128 * KiB + 1, 2 * MiB);
    default: {
      // mostly just above 2 MiB, sometimes up to the maximum
      if (r.chance(75)) return r.range(2 * MiB + 1, 8 * MiB < huge_max ? 8 * MiB : huge_max);
      return r.range(2 * MiB + 1, huge_max);
    }
  }
}
// Tier weights in per mille: small, medium, large, huge.
struct TierMix {
  unsigned w[kTierCount] = {900, 80, 18, 2};
};
inline unsigned pick_tier(Rng& r, const TierMix& m) {
  unsigned total = m.w[0] + m.w[1] + m.w[2] + m.w[3];
  unsigned k = static_cast<unsigned>(r.below(total));
  for (unsigned t = 0; t < kTierCount; ++t) {
    if (k < m.w[t]) return t;
    k -= m.w[t];
  }
  return kSmall;
}
inline size_t pick_size(Rng& r, const TierMix& m, size_t huge_max) {
  return size_in_tier(r, pick_tier(r, m), huge_max);
}

// ---- allocation through a random API -----------------------------------------------------------
// The APIs the programs mix. Aligned forms get a power-of-two alignment from 32 B to 4 KiB,
// sometimes up to 2 MiB.
enum class Api : uint8_t {
  kMalloc, kCalloc, kPosixMemalign, kAlignedAlloc, kMemalign, kNew, kNewArray, kNewNothrow,
  kNewAligned, kNewArrayAligned, kCount
};
inline const char* api_name(Api a) {
  static const char* names[] = {"malloc", "calloc", "posix_memalign", "aligned_alloc", "memalign", "new",
                                "new[]", "new(nothrow)", "new(align)", "new[](align)"};
  return names[static_cast<unsigned>(a)];
}
inline size_t pick_alignment(Rng& r) {
  if (r.chance(90)) return size_t{32} << r.below(8);    // 32 .. 4 KiB
  return size_t{8 * KiB} << r.below(9);                 // 8 KiB .. 2 MiB
}
inline Api pick_api(Rng& r, bool aligned_too = true) {
  unsigned k = static_cast<unsigned>(r.below(100));
  if (k < 45) return Api::kMalloc;
  if (k < 55) return Api::kCalloc;
  if (k < 70) return Api::kNew;
  if (k < 78) return Api::kNewArray;
  if (k < 82 || !aligned_too) return Api::kNewNothrow;
  if (k < 86) return Api::kPosixMemalign;
  if (k < 90) return Api::kAlignedAlloc;
  if (k < 93) return Api::kMemalign;
  if (k < 97) return Api::kNewAligned;
  return Api::kNewArrayAligned;
}

// Allocate n bytes through `api`, check alignment, usable size and (calloc) zeroes, fill it.
// Returns false when the allocator returned NULL / threw (the caller decides if that is an
// error). Problems with a returned block are counted as errors here.
inline bool allocate(Rng& r, Api api, size_t n, Block* out, uint64_t tag = 0) {
  void* p = nullptr;
  size_t align = 0;
  Via via = Via::kFree;
  switch (api) {
    case Api::kMalloc: p = malloc(n); break;
    case Api::kCalloc: {
      size_t c = 1, s = n;
      if (n % 16 == 0 && r.chance(50)) { c = n / 16; s = 16; }
      p = calloc(c, s);
      if (p != nullptr) {
        size_t nz = find_nonzero(p, n);
        if (nz != kIntact) error("calloc(%zu, %zu) = %p: byte %zu is 0x%02x, not zero", c, s, p, nz, static_cast<uint8_t*>(p)[nz]);
      }
      break;
    }
    case Api::kPosixMemalign: {
      align = pick_alignment(r);
      int rc = posix_memalign(&p, align, n);
      if (rc != 0) p = nullptr;
      break;
    }
    case Api::kAlignedAlloc:
      align = pick_alignment(r);
      p = aligned_alloc(align, (n + align - 1) & ~(align - 1));
      break;
    case Api::kMemalign: align = pick_alignment(r); p = memalign(align, n); break;
    case Api::kNew:
      try { p = ::operator new(n); } catch (const std::bad_alloc&) { p = nullptr; }
      via = Via::kDelete;
      break;
    case Api::kNewArray:
      try { p = ::operator new[](n); } catch (const std::bad_alloc&) { p = nullptr; }
      via = Via::kDeleteArray;
      break;
    case Api::kNewNothrow: p = ::operator new(n, std::nothrow); via = Via::kDelete; break;
    case Api::kNewAligned:
      align = pick_alignment(r);
      try { p = ::operator new(n, std::align_val_t(align)); } catch (const std::bad_alloc&) { p = nullptr; }
      via = Via::kDeleteAligned;
      break;
    case Api::kNewArrayAligned:
      align = pick_alignment(r);
      try { p = ::operator new[](n, std::align_val_t(align)); } catch (const std::bad_alloc&) { p = nullptr; }
      via = Via::kDeleteArrayAligned;
      break;
    case Api::kCount: break;
  }
  if (p == nullptr) return false;
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if ((a & 15) != 0) error("%s(%zu) = %p: not 16-byte aligned", api_name(api), n, p);
  if (align != 0 && (a & (align - 1)) != 0) error("%s(align %zu, %zu) = %p: misaligned", api_name(api), align, n, p);
  size_t us = malloc_usable_size(p);
  if (us < n) error("%s(%zu) = %p: malloc_usable_size %zu < %zu", api_name(api), n, p, us, n);
  *out = make_block(p, n, tag, align, via);
  return true;
}

// Realloc a malloc-family block to n bytes: verify it first, check the kept prefix after (with
// the old pattern) and refill with the new one. false (block unchanged) when realloc failed.
inline bool reallocate(Block& b, size_t n, const char* where) {
  check(b, where);
  void* q = realloc(b.p, n);
  if (q == nullptr) return false;
  size_t keep = b.n < n ? b.n : n;
  size_t bad = verify(q, keep, b.seed);
  if (bad != kIntact)
    error("%s: realloc(%p, %zu) = %p lost the contents at offset %zu (old size %zu)", where, b.p, n, q, bad, b.n);
  if ((reinterpret_cast<uintptr_t>(q) & 15) != 0) error("%s: realloc = %p: not 16-byte aligned", where, q);
  if (malloc_usable_size(q) < n) error("%s: realloc(%zu) = %p: usable size %zu", where, n, q, malloc_usable_size(q));
  b = make_block(q, n, b.seed, 0, Via::kFree);
  return true;
}

// ---- time --------------------------------------------------------------------------------------
inline double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// A run bound: time (opts.seconds) and/or a count (opts.iters).
struct Bound {
  double deadline;
  uint64_t iters;
  explicit Bound(const Options& o) : deadline(o.seconds > 0 ? now_s() + o.seconds : 1e300), iters(o.iters) {}
  // Checked every 64 iterations for time.
  bool more(uint64_t i) const {
    if (iters != 0 && i >= iters) return false;
    if ((i & 63) == 0 && now_s() >= deadline) return false;
    return true;
  }
  bool time_left() const { return now_s() < deadline; }
};

// ---- start and end -----------------------------------------------------------------------------
struct Run {
  Options o;
  double t0;
  explicit Run(const Options& opts) : o(opts), t0(now_s()) {
    bool active = nebula_active();
    if (!o.quiet)
      printf("%s: allocator %s, %u threads, %s%.1f s, scale %.2f%s\n", o.name,
             active ? "nebula-memory" : "glibc (not preloaded)", o.threads,
             o.iters ? "iters " : "", o.seconds, o.scale, o.smoke ? ", smoke" : "");
    if (o.require_active && !active) {
      fprintf(stderr, "%s: --require-active: nebula-memory is not the process allocator (LD_PRELOAD=%s)\n",
              o.name, getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "(unset)");
      fflush(stdout);
      _exit(3);
    }
    fflush(stdout);
  }
  // Print the two closing lines and return the exit status. `extra`: " key=value ..." figures.
  int finish(uint64_t ops, const std::string& extra = "") {
    double secs = now_s() - t0;
    uint64_t errors = g_errors.load();
    printf("%s: %llu operations, %llu errors (%u threads, %.1f s)%s\n", o.name,
           static_cast<unsigned long long>(ops), static_cast<unsigned long long>(errors), o.threads, secs,
           extra.c_str());
    printf("RESULT name=%s ops=%llu errors=%llu threads=%u seconds=%.1f%s\n", o.name,
           static_cast<unsigned long long>(ops), static_cast<unsigned long long>(errors), o.threads, secs,
           extra.c_str());
    fflush(stdout);
    fflush(stderr);
    return errors == 0 ? 0 : 1;
  }
};

inline std::string kv(const char* k, unsigned long long v) {
  return std::string(" ") + k + "=" + std::to_string(v);
}

}  // namespace stress
