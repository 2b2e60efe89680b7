/* Shared helpers for the nebula-memory LD_PRELOAD test suite (C11 and C++20).
 *
 * CHECK(expr)            : on failure prints "file:line: CHECK failed: expr" and exits 1.
 * CHECKF(expr, fmt, ...) : same, plus a printf-style detail line.
 * CHECK_PRELOAD()        : asserts that libnebulamem is really handling malloc
 *                          (nebula_mem_is_active() == 1). Built with
 *                          -DNEBULA_TEST_AGAINST_GLIBC (see tests/glibc_baseline.sh) it asserts
 *                          the opposite, so the glibc baseline run proves that the assertion
 *                          fails without the library.
 *
 * Failure exits with _exit(1) after flushing: a broken allocator must not get a second chance
 * to hang or crash in atexit handlers and turn a clean failure into a timeout.
 */
#ifndef NEBULA_TESTS_CHECK_H
#define NEBULA_TESTS_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif
int nebula_mem_is_active(void) __attribute__((weak));
#ifdef __cplusplus
}
#endif

#define NT_STR2(x) #x
#define NT_STR(x) NT_STR2(x)

#define CHECK(expr)                                                                     \
  do {                                                                                  \
    if (!(expr)) {                                                                      \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr);          \
      fflush(stdout);                                                                   \
      fflush(stderr);                                                                   \
      _exit(1);                                                                         \
    }                                                                                   \
  } while (0)

#define CHECKF(expr, ...)                                                               \
  do {                                                                                  \
    if (!(expr)) {                                                                      \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n    ", __FILE__, __LINE__, #expr);      \
      fprintf(stderr, __VA_ARGS__);                                                     \
      fputc('\n', stderr);                                                              \
      fflush(stdout);                                                                   \
      fflush(stderr);                                                                   \
      _exit(1);                                                                         \
    }                                                                                   \
  } while (0)

/* Launders a value through a volatile so the compiler cannot see through an allocation
 * (keeps malloc/free pairs and impossible sizes from being folded away or warned about). */
static inline size_t nt_opaque_size(size_t n) {
  volatile size_t v = n;
  return v;
}
static inline void *nt_opaque_ptr(void *p) {
  void *volatile v = p;
  return v;
}

/* nebula_mem_is_active, resolved either through the weak reference or dlsym (a non-PIE link
 * resolves an undefined weak function to 0 at link time). */
typedef int (*nt_active_fn)(void);
static inline nt_active_fn nt_active_function(void) {
  nt_active_fn f = nebula_mem_is_active;
  if (f == NULL) {
    void *s = dlsym(RTLD_DEFAULT, "nebula_mem_is_active");
    memcpy(&f, &s, sizeof f);
  }
  return f;
}

#ifdef NEBULA_TEST_AGAINST_GLIBC
#define NT_AGAINST_GLIBC 1
#define CHECK_PRELOAD()                                                                 \
  do {                                                                                  \
    /* baseline build: the library must be absent, proving the real assertion bites */ \
    CHECK(nt_active_function() == NULL);                                                \
  } while (0)
#else
#define NT_AGAINST_GLIBC 0
#define CHECK_PRELOAD()                                                                 \
  do {                                                                                  \
    nt_active_fn nt_f_ = nt_active_function();                                          \
    CHECKF(nt_f_ != NULL, "nebula_mem_is_active not found: LD_PRELOAD=%s",              \
           getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "(unset)");                   \
    CHECKF(nt_f_() == 1, "nebula_mem_is_active() returned %d", nt_f_());               \
  } while (0)
#endif

/* Looks up a symbol that glibc 2.36 does not provide (free_sized, cfree, ...). Under the
 * preload it must exist; in the glibc baseline it may be NULL and the caller skips. */
static inline void *nt_sym(const char *name) { return dlsym(RTLD_DEFAULT, name); }

/* ---- deterministic pseudo-random numbers (xorshift64*) ---- */
static inline uint64_t nt_rand(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* ---- content patterns ----
 * Byte i of a block filled with seed s is byte (i % 8) of the 64-bit word
 * nt_pat_word(s, i / 8), little-endian. Fill and verify work a word at a time on the
 * 8-aligned part (every allocation result is at least 8-aligned) so 64 MiB blocks stay cheap. */
static inline uint64_t nt_pat_word(uint64_t seed, size_t w) {
  uint64_t x = seed ^ ((uint64_t)w * 0x9E3779B97F4A7C15ULL);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 32;
  return x;
}
static inline uint8_t nt_pat_byte(uint64_t seed, size_t i) {
  return (uint8_t)(nt_pat_word(seed, i / 8) >> (8 * (i % 8)));
}
static inline void nt_fill(void *p, size_t n, uint64_t seed) {
  uint64_t *w = (uint64_t *)p;
  size_t nw = n / 8, i;
  for (i = 0; i < nw; i++) w[i] = nt_pat_word(seed, i);
  for (i = nw * 8; i < n; i++) ((uint8_t *)p)[i] = nt_pat_byte(seed, i);
}
/* Returns the index of the first wrong byte, or (size_t)-1 when the block is intact. */
static inline size_t nt_verify(const void *p, size_t n, uint64_t seed) {
  const uint64_t *w = (const uint64_t *)p;
  size_t nw = n / 8, i;
  for (i = 0; i < nw; i++)
    if (w[i] != nt_pat_word(seed, i)) {
      size_t b;
      for (b = i * 8; b < i * 8 + 8; b++)
        if (((const uint8_t *)p)[b] != nt_pat_byte(seed, b)) return b;
    }
  for (i = nw * 8; i < n; i++)
    if (((const uint8_t *)p)[i] != nt_pat_byte(seed, i)) return i;
  return (size_t)-1;
}
#define NT_OK ((size_t)-1)

/* Index of the first byte != v, or NT_OK. */
static inline size_t nt_find_not(const void *p, size_t n, uint8_t v) {
  const uint8_t *b = (const uint8_t *)p;
  size_t i = 0;
  uint64_t vv = 0x0101010101010101ULL * v;
  while (i < n && ((uintptr_t)(b + i) & 7)) {
    if (b[i] != v) return i;
    i++;
  }
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    if (w != vv) break;
  }
  for (; i < n; i++)
    if (b[i] != v) return i;
  return NT_OK;
}

/* ---- memory measurement without calling malloc (no stdio) ---- */
static inline size_t nt_rss_bytes(void) {
  char buf[256];
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  CHECK(fd >= 0);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  CHECK(n > 0);
  buf[n] = 0;
  /* fields: size resident shared text lib data dt (pages) */
  char *s = buf;
  while (*s && *s != ' ') s++;
  CHECK(*s == ' ');
  unsigned long long resident = strtoull(s + 1, NULL, 10);
  return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}
#define NT_MIB(x) ((size_t)(x) << 20)

static inline double nt_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Polls RSS every 10 ms (no allocation) until it is `drop` bytes below `from`, for at most
 * `seconds`; returns the last reading. */
static inline size_t nt_wait_rss_drop(size_t from, size_t drop, double seconds) {
  double t0 = nt_now_s();
  size_t rss = nt_rss_bytes();
  while (rss + drop > from && nt_now_s() - t0 < seconds) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
    rss = nt_rss_bytes();
  }
  return rss;
}

static inline int nt_is_pow2(size_t x) { return x && !(x & (x - 1)); }

/* ---- the process's mappings, from /proc/self/smaps (through stdio) ---- */
struct nt_mapping {
  uintptr_t lo, hi;
  char perms[8];      /* "rw-p", "---p", ... */
  char path[256];     /* "" for an anonymous mapping */
  char flags[256];    /* VmFlags: " rd wr mr mw me nr nh" */
  long anon_huge_kib; /* AnonHugePages */
};

/* Reads every mapping into out (at most cap); returns the count. */
static inline int nt_read_mappings(struct nt_mapping *out, int cap) {
  FILE *f = fopen("/proc/self/smaps", "r");
  CHECK(f != NULL);
  char line[512];
  int n = -1;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long lo, hi;
    char perms[8] = {0};
    int at = 0;
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms, &at) >= 3 && at > 0) {
      if (n + 1 >= cap) break;
      struct nt_mapping *m = &out[++n];
      memset(m, 0, sizeof *m);
      m->lo = lo;
      m->hi = hi;
      memcpy(m->perms, perms, sizeof m->perms);
      snprintf(m->path, sizeof m->path, "%s", line + at);
      m->path[strcspn(m->path, "\n")] = 0;
    } else if (n >= 0 && strncmp(line, "VmFlags:", 8) == 0) {
      snprintf(out[n].flags, sizeof out[n].flags, "%s", line + 8);
    } else if (n >= 0 && strncmp(line, "AnonHugePages:", 14) == 0) {
      out[n].anon_huge_kib = atol(line + 14);
    }
  }
  fclose(f);
  return n + 1;
}

/* The index of the mapping that holds p, or -1. */
static inline int nt_mapping_of(const struct nt_mapping *m, int n, const void *p) {
  for (int i = 0; i < n; ++i)
    if ((uintptr_t)p >= m[i].lo && (uintptr_t)p < m[i].hi) return i;
  return -1;
}

/* The library's segment map, its sparse .bss: the biggest anonymous mapping that follows the
 * library's own mappings without a gap. -1 where there is none. */
static inline int nt_segment_map(const struct nt_mapping *m, int n) {
  int last_lib = -1, best = -1;
  for (int i = 0; i < n; ++i)
    if (strstr(m[i].path, "libnebulamem") != NULL) last_lib = i;
  if (last_lib < 0) return -1;
  for (int i = last_lib + 1; i < n && m[i].lo == m[i - 1].hi && m[i].path[0] == 0; ++i)
    if (best < 0 || m[i].hi - m[i].lo > m[best].hi - m[best].lo) best = i;
  return best;
}

#endif /* NEBULA_TESTS_CHECK_H */
