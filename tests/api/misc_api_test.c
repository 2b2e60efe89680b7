/* The rest of the exported C API: free(NULL), cfree, free_sized, free_aligned_sized, the
 * __libc_* aliases (mixed freely with the public names), mallinfo/mallinfo2, malloc_trim,
 * mallopt, malloc_stats and malloc_info (XML starting with "<malloc"). free_sized,
 * free_aligned_sized and the __libc_* frees are checked to really release memory: a loop that
 * would leak gigabytes of touched memory must keep RSS bounded. */
#include "../check.h"

#include <malloc.h>

/* glibc exports these (GLIBC_2.2.5) but declares them in no header */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

typedef void (*free_sized_fn)(void *, size_t);
typedef void (*free_aligned_sized_fn)(void *, size_t, size_t);
typedef void (*cfree_fn)(void *);

static free_sized_fn get_free_sized(void) {
  free_sized_fn f;
  void *s = nt_sym("free_sized");
  memcpy(&f, &s, sizeof f);
  return f;
}
static free_aligned_sized_fn get_free_aligned_sized(void) {
  free_aligned_sized_fn f;
  void *s = nt_sym("free_aligned_sized");
  memcpy(&f, &s, sizeof f);
  return f;
}
static cfree_fn get_cfree(void) {
  cfree_fn f;
  void *s = nt_sym("cfree");
  memcpy(&f, &s, sizeof f);
  return f;
}

/* Runs `body` 20000 times on 64 KiB blocks (1.25 GiB touched in all) and asserts RSS grew by
 * less than 64 MiB: the release function under test really frees. */
#define ASSERT_RELEASES(what, alloc_expr, release_stmt)                                  \
  do {                                                                                  \
    size_t rss0_ = nt_rss_bytes();                                                      \
    for (unsigned k_ = 0; k_ < 20000; k_++) {                                           \
      void *p_ = (alloc_expr);                                                          \
      CHECK(p_ != NULL);                                                                \
      memset(p_, (int)k_, 65536);                                                       \
      release_stmt;                                                                     \
    }                                                                                   \
    size_t rss1_ = nt_rss_bytes();                                                      \
    CHECKF(rss1_ < rss0_ + NT_MIB(64), "%s leaks: RSS %zu MiB -> %zu MiB", what,        \
           rss0_ >> 20, rss1_ >> 20);                                                   \
  } while (0)

int main(void) {
  CHECK_PRELOAD();
  size_t i;

  /* ---- free(NULL) and friends are no-ops ---- */
  free(NULL);
  __libc_free(NULL);
  {
    void *r = realloc(NULL, 0);
    CHECK(r != NULL);
    free(r);
  }

  /* ---- cfree (obsolete alias of free; glibc 2.36 only has it as a compat symbol) ---- */
  {
    cfree_fn cf = get_cfree();
    if (!NT_AGAINST_GLIBC) CHECKF(cf != NULL, "cfree is not exported");
    if (cf) {
      cf(NULL);
      ASSERT_RELEASES("cfree", malloc(nt_opaque_size(65536)), cf(p_));
    }
  }

  /* ---- free_sized / free_aligned_sized (C23) ---- */
  {
    free_sized_fn fs = get_free_sized();
    free_aligned_sized_fn fas = get_free_aligned_sized();
    if (!NT_AGAINST_GLIBC) {
      CHECKF(fs != NULL, "free_sized is not exported");
      CHECKF(fas != NULL, "free_aligned_sized is not exported");
    }
    if (fs) {
      fs(NULL, 0);
      fs(NULL, 123);
      /* every size 0..5000 and tier sizes, from malloc, calloc and realloc */
      for (i = 0; i <= 5000; i++) {
        void *p = malloc(nt_opaque_size(i));
        CHECK(p != NULL);
        memset(p, 0xAB, i);
        fs(p, i);
        p = calloc(1, nt_opaque_size(i));
        CHECK(p != NULL);
        fs(p, i);
        if (i == 0) continue; /* realloc(p, 0) frees and returns NULL */
        p = malloc(nt_opaque_size(i / 2));
        CHECK(p != NULL);
        p = realloc(p, nt_opaque_size(i));
        CHECK(p != NULL);
        fs(p, i);
      }
      static const size_t tiers[] = {10000, 100000, 1 << 20, 5 << 20, 40 << 20};
      for (i = 0; i < sizeof tiers / sizeof tiers[0]; i++) {
        void *p = malloc(nt_opaque_size(tiers[i]));
        CHECK(p != NULL);
        memset(p, 1, tiers[i]);
        fs(p, tiers[i]);
      }
      ASSERT_RELEASES("free_sized", malloc(nt_opaque_size(65536)), fs(p_, 65536));
    }
    if (fas) {
      fas(NULL, 64, 0);
      for (size_t a = 16; a <= NT_MIB(1); a <<= 1) {
        size_t sizes[] = {a, 3 * a, 1000, 100000};
        for (i = 0; i < 4; i++) {
          size_t n = (sizes[i] + a - 1) / a * a; /* aligned_alloc wants a multiple (C11) */
          void *p = aligned_alloc(nt_opaque_size(a), nt_opaque_size(n));
          CHECK(p != NULL && ((uintptr_t)p & (a - 1)) == 0);
          memset(p, 0xCD, n);
          fas(p, a, n);
        }
      }
      ASSERT_RELEASES("free_aligned_sized", aligned_alloc(4096, nt_opaque_size(65536)),
                      fas(p_, 4096, 65536));
    }
  }

  /* ---- __libc_* aliases are the same allocator as the public names ---- */
  {
    for (i = 0; i < 2000; i++) {
      size_t n = 1 + (i * 613) % 200000;
      char *a = (char *)__libc_malloc(n);
      CHECK(a != NULL && ((uintptr_t)a & 15) == 0);
      CHECK(malloc_usable_size(a) >= n);
      nt_fill(a, n, i);
      char *b = (char *)__libc_realloc(a, n * 2); /* realloc of a __libc_malloc block */
      CHECK(b != NULL);
      CHECK(nt_verify(b, n, i) == NT_OK);
      free(b); /* public free of a __libc block */
      char *c = (char *)malloc(nt_opaque_size(n));
      CHECK(c != NULL);
      memset(c, 0xAB, n);
      c = (char *)__libc_realloc(c, n + 10);
      CHECK(c != NULL);
      __libc_free(c); /* __libc_free of a public block */
      char *z = (char *)__libc_calloc(n, 1);
      CHECK(z != NULL && nt_find_not(z, n, 0) == NT_OK);
      free(z);
    }
    for (size_t a = 16; a <= NT_MIB(1); a <<= 1) {
      void *m = __libc_memalign(a, 777);
      CHECK(m != NULL && ((uintptr_t)m & (a - 1)) == 0);
      memset(m, 1, 777);
      free(m);
    }
    long page = sysconf(_SC_PAGESIZE);
    void *v = __libc_valloc(100);
    CHECK(v != NULL && ((uintptr_t)v % (uintptr_t)page) == 0);
    void *pv = __libc_pvalloc(100);
    CHECK(pv != NULL && ((uintptr_t)pv % (uintptr_t)page) == 0);
    CHECK(malloc_usable_size(pv) >= (size_t)page);
    memset(pv, 2, (size_t)page);
    __libc_free(v);
    free(pv);
    errno = 0;
    CHECK(__libc_malloc(nt_opaque_size(SIZE_MAX)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(__libc_calloc(nt_opaque_size(SIZE_MAX / 2), 3) == NULL && errno == ENOMEM);
    ASSERT_RELEASES("__libc_free", __libc_malloc(nt_opaque_size(65536)), __libc_free(p_));
    ASSERT_RELEASES("free of __libc_malloc", __libc_malloc(nt_opaque_size(65536)), free(p_));
  }

  /* ---- mallinfo / mallinfo2 / malloc_trim / mallopt ---- */
  {
    void *keepers[64];
    for (i = 0; i < 64; i++) {
      keepers[i] = malloc(nt_opaque_size(100000));
      CHECK(keepers[i] != NULL);
      memset(keepers[i], 3, 100000);
    }
    struct mallinfo2 mi2 = mallinfo2();
    /* whatever the allocator reports must at least be sane numbers, not garbage */
    CHECK(mi2.arena < ((size_t)1 << 44) && mi2.uordblks < ((size_t)1 << 44));
    CHECK(mi2.hblkhd < ((size_t)1 << 44) && mi2.fordblks < ((size_t)1 << 44));
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo mi = mallinfo();
#pragma GCC diagnostic pop
    (void)mi;
    for (i = 0; i < 64; i++) free(keepers[i]);
    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1);
    r = malloc_trim(1 << 20);
    CHECK(r == 0 || r == 1);
    r = mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    CHECK(r == 0 || r == 1);
    r = mallopt(M_TRIM_THRESHOLD, 1 << 20);
    CHECK(r == 0 || r == 1);
    r = mallopt(M_ARENA_MAX, 8);
    CHECK(r == 0 || r == 1);
    /* the allocator keeps working after the tuning calls */
    for (i = 0; i < 1000; i++) {
      void *p = malloc(nt_opaque_size(i * 1000));
      CHECK(p != NULL);
      memset(p, 4, i * 1000);
      free(p);
    }
  }

  /* ---- malloc_stats: writes to stderr; capture it so the test log stays clean ---- */
  {
    char tmpl[] = "/tmp/nebula-malloc-stats.XXXXXX";
    int fd = mkstemp(tmpl);
    CHECK(fd >= 0);
    unlink(tmpl);
    fflush(stderr);
    int saved = dup(2);
    CHECK(saved >= 0);
    CHECK(dup2(fd, 2) == 2);
    malloc_stats();
    fflush(stderr);
    CHECK(dup2(saved, 2) == 2);
    close(saved);
    close(fd);
  }

  /* ---- malloc_info: XML on a FILE* ---- */
  for (unsigned rep = 0; rep < 3; rep++) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != NULL);
    void *busy = malloc(nt_opaque_size(12345));
    CHECK(busy != NULL);
    int r = malloc_info(0, f);
    CHECK(fclose(f) == 0);
    CHECKF(r == 0, "malloc_info returned %d", r);
    CHECK(buf != NULL);
    CHECKF(len >= 7 && strncmp(buf, "<malloc", 7) == 0, "malloc_info output starts with '%.20s'", buf);
    free(buf);
    free(busy);
  }
  {
    /* also to a real file */
    FILE *f = tmpfile();
    CHECK(f != NULL);
    CHECK(malloc_info(0, f) == 0);
    rewind(f);
    char head[8] = {0};
    CHECK(fread(head, 1, 7, f) == 7 && strcmp(head, "<malloc") == 0);
    fclose(f);
  }

  printf("misc_api_test: ok (cfree, free_sized, free_aligned_sized, __libc_*, mallinfo2, trim, "
         "mallopt, malloc_stats, malloc_info)\n");
  return 0;
}
