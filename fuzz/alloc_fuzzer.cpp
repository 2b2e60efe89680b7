// fuzz/alloc_fuzzer.cpp: a libFuzzer target for the engine's allocation API, checked against a
// shadow model.
//
// The input is a program: a sequence of records, each an op byte followed by its operands
// (bytes past the end read as 0). It runs on a table of 64 slots of live blocks, through the
// prefixed entry points of the engine (nebula_malloc, nebula_calloc, nebula_realloc,
// nebula_aligned_alloc, nebula_posix_memalign, nebula_free, nebula_usable_size), linked from
// the engine's sources without interposition, so the sanitizer's own malloc stays out of the way.
//
//   op % 16   record                                  what it does
//   0, 1      slot size                                malloc
//   2         slot count(u8) size                      calloc(count+1, size); zeroes checked
//   3, 4      slot size                                realloc (realloc(NULL, n) on an empty slot,
//                                                      size 0 frees)
//   5         slot align(u8) size                      aligned_alloc(1 << align%24, size)
//   6         slot align(u8) size                      posix_memalign, also invalid alignments
//   7, 8, 9   slot                                     free
//   10        slot                                     fill the block up to its usable size
//   11        -                                        verify every live block
//   12        mode(u8) n(u16)                          fault injection: nth / every / random / off
//   13        count(u8) size                           a thread frees up to 8 blocks (remote
//                                                      frees) and allocates count%8 new ones
//   14        kind(u8)                                 impossible requests: huge sizes, calloc
//                                                      overflow, huge alignments
//   15        -                                        nebula_mem_collect() and a statistics check
//   size = tier(u8) value(u16): tier%8 0..2 small (to 256 B, 1 KiB, 8 KiB), 3 medium, 4 large,
//          5 huge (to 12 MiB), 6 edge sizes of the tiers, 7 tiny (0..15)
//
// Checked against the shadow model after every operation: a successful allocation returns a
// 16-byte aligned block (and as aligned as asked), nebula_usable_size >= the request, and its
// usable range overlaps no other live block; calloc memory is zero; every block keeps the
// pattern written into it (derived from its address and size) until it is freed or
// reallocated, and realloc keeps the prefix; a failure is NULL with errno ENOMEM (EINVAL /
// ENOMEM returned by posix_memalign, the out pointer untouched) and happens only while fault
// injection is on or for an impossible request. At the end of every input all blocks are
// verified and freed, injection is turned off, and the statistics must show no live bytes.
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <thread>
#include <vector>

#include "fuzz/pattern.hpp"
#include "nebula/mem.h"

namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;
constexpr unsigned kSlots = 64;
constexpr size_t kFull = 64 * KiB;    // blocks up to this size are filled and checked entirely

struct Reader {
  const uint8_t* p;
  size_t n;
  size_t i = 0;
  bool more() const { return i < n; }
  uint8_t u8() { return i < n ? p[i++] : 0; }
  uint16_t u16() {
    uint16_t lo = u8();
    return static_cast<uint16_t>(lo | (u8() << 8));
  }
};

[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "alloc_fuzzer: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  abort();
}

using fuzz::fill_bytes;
using fuzz::first_bad;
using fuzz::first_nonzero;
using fuzz::pattern_byte;
using fuzz::pattern_seed;

// The parts of an n-byte block that carry the pattern: all of it up to kFull; beyond, the first
// and last 4 KiB and 64 bytes of every 256 KiB (huge blocks stay cheap to fuzz; each touch of a
// block backed by transparent huge pages costs a 2 MiB page).
template <class F>
void regions(size_t n, F f) {
  if (n <= kFull) {
    f(size_t{0}, n);
    return;
  }
  f(size_t{0}, size_t{4096});
  for (size_t off = 256 * KiB; off + 64 <= n - 4096; off += 256 * KiB) f(off, off + 64);
  f(n - 4096, n);
}

struct Slot {
  uint8_t* p = nullptr;
  size_t n = 0;        // requested
  size_t filled = 0;   // pattern covers [0, filled) (sampled beyond kFull); >= n after op 10
  size_t usable = 0;
  uint64_t seed = 0;
};

Slot g_slots[kSlots];
bool g_trace = getenv("FUZZ_TRACE") != nullptr;   // print every operation (to replay a crash)
#define TRACE(...)                         \
  do {                                     \
    if (g_trace) fprintf(stderr, __VA_ARGS__); \
  } while (0)
std::map<uintptr_t, uintptr_t> g_ranges;   // live usable ranges: start -> end
bool g_faults = false;                     // injection on: failures allowed
bool g_remote_used = false;

void fill_block(Slot& s) {
  s.seed = pattern_seed(s.p, s.n);
  s.filled = s.n;
  regions(s.n, [&](size_t a, size_t b) { fill_bytes(s.p, a, b, s.seed); });
}

void verify_range(const Slot& s, size_t limit, const char* what) {
  regions(s.filled, [&](size_t a, size_t b) {
    if (b > limit) b = limit;
    if (a >= b) return;
    size_t i = first_bad(s.p, a, b, s.seed);
    if (i != SIZE_MAX)
        fail("%s: block %p (%zu bytes, usable %zu) damaged at offset %zu: 0x%02x, expected 0x%02x", what,
             static_cast<void*>(s.p), s.n, s.usable, i, s.p[i], pattern_byte(s.seed, i));
  });
}
void verify(const Slot& s, const char* what) {
  if (s.p) verify_range(s, s.filled, what);
}

void track(Slot& s, size_t align, const char* what) {
  uintptr_t a = reinterpret_cast<uintptr_t>(s.p);
  if ((a & 15) != 0) fail("%s(%zu) = %p: not 16-byte aligned", what, s.n, static_cast<void*>(s.p));
  if (align > 16 && (a & (align - 1)) != 0) fail("%s(align %zu, %zu) = %p: misaligned", what, align, s.n, static_cast<void*>(s.p));
  s.usable = nebula_usable_size(s.p);
  if (s.usable < s.n) fail("%s(%zu) = %p: usable size %zu", what, s.n, static_cast<void*>(s.p), s.usable);
  uintptr_t e = a + (s.usable ? s.usable : 1);
  auto it = g_ranges.upper_bound(a);
  if (it != g_ranges.end() && it->first < e)
    fail("%s(%zu) = %p (usable %zu) overlaps the live block at %#lx", what, s.n, static_cast<void*>(s.p), s.usable,
         static_cast<unsigned long>(it->first));
  if (it != g_ranges.begin()) {
    --it;
    if (it->second > a)
      fail("%s(%zu) = %p overlaps the live block %#lx..%#lx", what, s.n, static_cast<void*>(s.p),
           static_cast<unsigned long>(it->first), static_cast<unsigned long>(it->second));
  }
  g_ranges[a] = e;
}
void untrack(const Slot& s) {
  if (g_ranges.erase(reinterpret_cast<uintptr_t>(s.p)) != 1) fail("shadow model lost block %p", static_cast<void*>(s.p));
}

void release(Slot& s) {
  if (!s.p) return;
  TRACE("  free(%p) (slot %ld, %zu bytes)\n", static_cast<void*>(s.p), static_cast<long>(&s - g_slots), s.n);
  verify(s, "free");
  untrack(s);
  nebula_free(s.p);
  s = Slot{};
}

// A failure: allowed only with injection on (or for impossible requests), and must say ENOMEM.
void failed(const char* what, size_t n, int err) {
  TRACE("  %s(%zu) failed, errno %d\n", what, n, err);
  if (!g_faults) fail("%s(%zu) failed with fault injection off (errno %d)", what, n, err);
  if (err != ENOMEM) fail("%s(%zu) failed with errno %d, not ENOMEM", what, n, err);
}

size_t read_size(Reader& r) {
  unsigned t = r.u8() % 8;
  size_t v = r.u16();
  switch (t) {
    case 0: return 1 + v % 256;
    case 1: return 1 + v % 1024;
    case 2: return 1 + v % (8 * KiB);
    case 3: return 8 * KiB + 1 + (v * 2) % (120 * KiB);
    case 4: return 128 * KiB + 1 + (v * 32) % (2 * MiB - 128 * KiB);
    case 5: return 2 * MiB + 1 + (v * 256) % (10 * MiB);
    case 6: {
      static const size_t edges[] = {0, 1, 15, 16, 17, 1024, 1025, 8 * KiB, 8 * KiB + 1, 128 * KiB,
                                     128 * KiB + 1, 2 * MiB, 2 * MiB + 1, 4 * MiB - 64 * KiB, 4 * MiB, 8 * MiB + 7};
      return edges[v % 16];
    }
    default: return v % 16;
  }
}

void place(Slot& s, void* p, size_t n, size_t align, const char* what) {
  if (align)
    TRACE("  %s(align %zu, %zu) = %p usable %zu (slot %ld)\n", what, align, n, p, nebula_usable_size(p),
          static_cast<long>(&s - g_slots));
  else
    TRACE("  %s(%zu) = %p usable %zu (slot %ld)\n", what, n, p, nebula_usable_size(p), static_cast<long>(&s - g_slots));
  s.p = static_cast<uint8_t*>(p);
  s.n = n;
  track(s, align, what);
  fill_block(s);
}

void op_malloc(Reader& r) {
  Slot& s = g_slots[r.u8() % kSlots];
  size_t n = read_size(r);
  release(s);
  errno = 0;
  void* p = nebula_malloc(n);
  if (!p) return failed("nebula_malloc", n, errno);
  place(s, p, n, 0, "nebula_malloc");
}

void op_calloc(Reader& r) {
  Slot& s = g_slots[r.u8() % kSlots];
  size_t count = 1 + r.u8() % 16;
  size_t size = read_size(r);
  size_t n = count * size;
  if (n > 24 * MiB) {   // keep it cheap
    count = 1;
    n = size;
  }
  release(s);
  errno = 0;
  void* p = nebula_calloc(count, size);
  if (!p) return failed("nebula_calloc", n, errno);
  const uint8_t* b = static_cast<const uint8_t*>(p);
  // all of it up to 1 MiB, then one byte per page
  size_t check = n <= MiB ? n : MiB;
  size_t z = first_nonzero(b, 0, check);
  if (z != SIZE_MAX) fail("nebula_calloc(%zu, %zu) = %p: byte %zu is 0x%02x", count, size, p, z, b[z]);
  for (size_t i = check; i < n; i += 4096)
    if (b[i] != 0) fail("nebula_calloc(%zu, %zu) = %p: byte %zu is 0x%02x", count, size, p, i, b[i]);
  if (n > 0 && b[n - 1] != 0) fail("nebula_calloc(%zu, %zu): last byte not zero", count, size);
  place(s, p, n, 0, "nebula_calloc");
}

void op_realloc(Reader& r) {
  Slot& s = g_slots[r.u8() % kSlots];
  size_t n = read_size(r);
  if (s.p == nullptr) {
    errno = 0;
    void* p = nebula_realloc(nullptr, n);
    if (!p) return failed("nebula_realloc(NULL)", n, errno);
    place(s, p, n, 0, "nebula_realloc(NULL)");
    return;
  }
  verify(s, "before realloc");
  if (n == 0) {
    untrack(s);
    if (nebula_realloc(s.p, 0) != nullptr) fail("nebula_realloc(p, 0) did not return NULL");
    s = Slot{};
    return;
  }
  Slot old = s;
  untrack(s);
  errno = 0;
  void* p = nebula_realloc(s.p, n);
  if (!p) {
    int e = errno;
    // the old block is intact and still live
    g_ranges[reinterpret_cast<uintptr_t>(old.p)] = reinterpret_cast<uintptr_t>(old.p) + (old.usable ? old.usable : 1);
    verify(old, "after a failed realloc");
    if (nebula_usable_size(old.p) != old.usable) fail("a failed realloc changed the old block's usable size");
    return failed("nebula_realloc", n, e);
  }
  // the kept prefix carries the old pattern (at the new address)
  Slot moved = old;
  moved.p = static_cast<uint8_t*>(p);
  verify_range(moved, n < old.filled ? n : old.filled, "realloc: kept prefix");
  place(s, p, n, 0, "nebula_realloc");
}

void op_aligned(Reader& r, bool posix) {
  Slot& s = g_slots[r.u8() % kSlots];
  uint8_t a = r.u8();
  size_t n = read_size(r);
  release(s);
  if (!posix) {
    size_t align = size_t{1} << (a % 24);
    errno = 0;
    void* p = nebula_aligned_alloc(align, n);
    if (!p) return failed("nebula_aligned_alloc", n, errno);
    place(s, p, n, align, "nebula_aligned_alloc");
    return;
  }
  // posix_memalign: a few invalid alignments too
  size_t align;
  bool valid = true;
  switch (a >> 5) {
    case 0: align = 0; valid = false; break;
    case 1: align = 4; valid = false; break;
    case 2: align = 24 + (a & 31) * 8; valid = (align & (align - 1)) == 0; break;
    default: align = size_t{8} << (a % 21); break;   // 8 B .. 8 MiB
  }
  void* sentinel = reinterpret_cast<void*>(0x5a5a);
  void* p = sentinel;
  errno = 0;
  int rc = nebula_posix_memalign(&p, align, n);
  if (!valid) {
    if (rc != EINVAL) fail("nebula_posix_memalign(align %zu) returned %d, not EINVAL", align, rc);
    if (p != sentinel) fail("nebula_posix_memalign changed the out pointer on EINVAL");
    if (rc == 0) nebula_free(p);
    return;
  }
  if (rc != 0) {
    if (p != sentinel) fail("nebula_posix_memalign changed the out pointer on failure");
    return failed("nebula_posix_memalign", n, rc);
  }
  place(s, p, n, align, "nebula_posix_memalign");
}

void op_free(Reader& r) { release(g_slots[r.u8() % kSlots]); }

// Write the pattern over the whole usable size (bytes beyond the request are the caller's too).
void op_fill_usable(Reader& r) {
  Slot& s = g_slots[r.u8() % kSlots];
  if (!s.p) return;
  verify(s, "before filling to the usable size");
  if (s.usable > kFull) return;   // sampled regions stay as they are
  fill_bytes(s.p, s.n, s.usable, s.seed);
  s.filled = s.usable;
}

void op_faults(Reader& r) {
  uint8_t mode = r.u8();
  unsigned n = 1 + r.u16() % 64;
  char spec[64];
  switch (mode % 5) {
    case 0: snprintf(spec, sizeof spec, "nth:%u", n); break;
    case 1: snprintf(spec, sizeof spec, "every:%u", n); break;
    case 2: snprintf(spec, sizeof spec, "random:%u:%u", n, mode); break;
    default: snprintf(spec, sizeof spec, "off"); break;
  }
  TRACE("  fault injection %s\n", spec);
  if (nebula_mem_fault_inject(spec) != 0) fail("nebula_mem_fault_inject(\"%s\") refused", spec);
  g_faults = strcmp(spec, "off") != 0;
}

void op_remote(Reader& r) {
  unsigned count = r.u8() % 8;
  size_t n = read_size(r) % (3 * MiB);   // up to 8 of them: keep them to small .. just huge
  Slot* victims[8];
  unsigned nv = 0;
  for (unsigned k = 0; k < kSlots && nv < 8; ++k) {
    Slot& s = g_slots[(k * 7 + count) % kSlots];
    if (s.p) {
      verify(s, "before a remote free");
      untrack(s);
      victims[nv++] = &s;
    }
  }
  void* made[8] = {};
  int errs[8] = {};
  std::thread t([&] {
    for (unsigned k = 0; k < nv; ++k) nebula_free(victims[k]->p);
    for (unsigned k = 0; k < count; ++k) {
      errno = 0;
      made[k] = nebula_malloc(n + k);
      errs[k] = errno;
    }
  });
  t.join();
  g_remote_used = true;
  for (unsigned k = 0; k < nv; ++k) *victims[k] = Slot{};
  unsigned k = 0;
  for (unsigned i = 0; i < kSlots && k < count; ++i) {
    Slot& s = g_slots[(i * 13 + 5) % kSlots];
    if (s.p) continue;
    if (!made[k]) failed("nebula_malloc in another thread", n + k, errs[k]);
    else place(s, made[k], n + k, 0, "nebula_malloc in another thread");
    ++k;
  }
  for (; k < count; ++k) {   // no free slot: free it here
    if (made[k]) nebula_free(made[k]);
    else failed("nebula_malloc in another thread", n + k, errs[k]);
  }
}

void op_impossible(Reader& r) {
  uint8_t kind = r.u8();
  errno = 0;
  void* p = nullptr;
  switch (kind % 5) {
    case 0: p = nebula_malloc(SIZE_MAX - kind); break;
    case 1: p = nebula_malloc(static_cast<size_t>(PTRDIFF_MAX) + 1 + kind); break;
    case 2: p = nebula_calloc(SIZE_MAX / 2 + kind, 3); break;
    case 3: p = nebula_aligned_alloc(size_t{1} << 62, 16); break;
    default: {
      void* s = reinterpret_cast<void*>(0x77);
      int rc = nebula_posix_memalign(&s, 64, SIZE_MAX - 4096);
      if (rc != ENOMEM || s != reinterpret_cast<void*>(0x77))
        fail("nebula_posix_memalign(64, SIZE_MAX - 4096) returned %d, out %p", rc, s);
      return;
    }
  }
  if (p != nullptr) fail("impossible request %u succeeded: %p", kind % 5, p);
  if (errno != ENOMEM && errno != EINVAL) fail("impossible request %u: errno %d", kind % 5, errno);
}

void check_stats(bool empty) {
  nebula_mem_collect();
  nebula_mem_stats st;
  nebula_mem_get_stats(&st);
  uint64_t want = 0;
  for (const Slot& s : g_slots) want += s.n;
  if (st.live_bytes < want) fail("statistics: live bytes %llu < %llu requested by live blocks", static_cast<unsigned long long>(st.live_bytes), static_cast<unsigned long long>(want));
  if (empty && (st.live_bytes != 0 || st.huge_bytes != 0))
    fail("statistics: every block freed and collected, but live bytes %llu, huge bytes %llu", static_cast<unsigned long long>(st.live_bytes),
         static_cast<unsigned long long>(st.huge_bytes));
}

}  // namespace

// The engine reports a bad pointer by raising SIGABRT with the default action restored, which
// kills the process before libFuzzer can save the input. With FUZZ_CURRENT_INPUT set (fuzz/run.sh
// sets it) every input is written there first, so the one that killed the process is kept.
void save_current_input(const uint8_t* data, size_t size) {
  static const char* path = getenv("FUZZ_CURRENT_INPUT");
  if (path == nullptr) return;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  while (size > 0) {
    ssize_t w = write(fd, data, size);
    if (w <= 0) break;
    data += w;
    size -= static_cast<size_t>(w);
  }
  close(fd);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  save_current_input(data, size);
  Reader r{data, size};
  unsigned steps = 0;
  while (r.more() && steps++ < 512) {
    uint8_t op = r.u8() % 16;
    TRACE("op %u at byte %zu\n", op, r.i - 1);
    switch (op) {
      case 0: case 1: op_malloc(r); break;
      case 2: op_calloc(r); break;
      case 3: case 4: op_realloc(r); break;
      case 5: op_aligned(r, false); break;
      case 6: op_aligned(r, true); break;
      case 7: case 8: case 9: op_free(r); break;
      case 10: op_fill_usable(r); break;
      case 11: for (const Slot& s : g_slots) verify(s, "verify all"); break;
      case 12: op_faults(r); break;
      case 13: op_remote(r); break;
      case 14: op_impossible(r); break;
      default: check_stats(false); break;
    }
  }
  // End of the input: injection off, everything verified and freed, nothing left live.
  nebula_mem_fault_inject("off");
  g_faults = false;
  for (Slot& s : g_slots) release(s);
  if (!g_ranges.empty()) fail("shadow model: %zu ranges left", g_ranges.size());
  if (g_remote_used) {
    check_stats(true);
    g_remote_used = false;
  } else {
    nebula_mem_stats st;
    nebula_mem_get_stats(&st);
    // Without remote frees nothing waits on another thread's list: the count is exact now.
    if (st.live_bytes != 0) fail("statistics: every block freed, but live bytes %llu", static_cast<unsigned long long>(st.live_bytes));
  }
  return 0;
}
