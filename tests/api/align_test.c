/* Alignment: every malloc/calloc/realloc result is 16-byte aligned; posix_memalign,
 * aligned_alloc and memalign honour every power-of-two alignment from 16 B to 1 MiB (and the
 * small ones below 16) with the whole block writable and malloc_usable_size >= request;
 * valloc/pvalloc are page aligned and pvalloc rounds the size up to a page. Blocks are kept
 * alive together and verified afterwards, so an overlap between two results is caught. */
#include "../check.h"

#include <malloc.h>

#define ALIGN_OK(p, a) ((((uintptr_t)(p)) & ((uintptr_t)(a)-1)) == 0)

struct live {
  void *p;
  size_t n;
  uint64_t seed;
};

static struct live lv[4096];
static size_t nlive;

static void keep(void *p, size_t n) {
  CHECK(nlive < sizeof lv / sizeof lv[0]);
  lv[nlive].p = p;
  lv[nlive].n = n;
  lv[nlive].seed = 0xA11C0000u + nlive;
  nt_fill(p, n, lv[nlive].seed);
  nlive++;
}

static void verify_and_free_all(const char *what) {
  size_t i;
  for (i = 0; i < nlive; i++) {
    size_t bad = nt_verify(lv[i].p, lv[i].n, lv[i].seed);
    CHECKF(bad == NT_OK, "%s: block %zu (%p, %zu bytes) overwritten at offset %zu", what, i, lv[i].p,
           lv[i].n, bad);
  }
  for (i = 0; i < nlive; i++) free(lv[i].p);
  nlive = 0;
}

/* Allocates one block with the given aligned allocator and checks everything about it. */
enum { K_POSIX, K_ALIGNED_ALLOC, K_MEMALIGN, K_COUNT };
static const char *kname[] = {"posix_memalign", "aligned_alloc", "memalign"};

static void *aligned(int kind, size_t a, size_t n) {
  void *p = NULL;
  switch (kind) {
    case K_POSIX: {
      int r = posix_memalign(&p, nt_opaque_size(a), nt_opaque_size(n));
      CHECKF(r == 0, "posix_memalign(%zu, %zu) returned %d", a, n, r);
      break;
    }
    case K_ALIGNED_ALLOC:
      p = aligned_alloc(nt_opaque_size(a), nt_opaque_size(n));
      break;
    default:
      p = memalign(nt_opaque_size(a), nt_opaque_size(n));
      break;
  }
  CHECKF(p != NULL, "%s(%zu, %zu) returned NULL", kname[kind], a, n);
  CHECKF(ALIGN_OK(p, a), "%s(%zu, %zu) = %p is misaligned", kname[kind], a, n, p);
  CHECKF(ALIGN_OK(p, 16) || a < 16, "%s(%zu, %zu) = %p not 16-aligned", kname[kind], a, n, p);
  size_t u = malloc_usable_size(p);
  CHECKF(u >= n, "%s(%zu, %zu): malloc_usable_size %zu < request", kname[kind], a, n, u);
  /* the whole usable block must be writable */
  memset(p, 0xE7, u);
  return p;
}

int main(void) {
  CHECK_PRELOAD();
  size_t i, a;
  uint64_t rng = 0x1234567u;
  long page = sysconf(_SC_PAGESIZE);
  CHECK(page > 0);

  /* ---- plain allocators: 16-byte alignment for every size class ---- */
  for (i = 0; i <= 4096; i++) {
    void *p = malloc(nt_opaque_size(i));
    CHECKF(p != NULL && ALIGN_OK(p, 16), "malloc(%zu) = %p", i, p);
    void *c = calloc(1, nt_opaque_size(i));
    CHECKF(c != NULL && ALIGN_OK(c, 16), "calloc(1, %zu) = %p", i, c);
    void *r = realloc(p, nt_opaque_size(i * 3 + 1));
    CHECKF(r != NULL && ALIGN_OK(r, 16), "realloc(%zu) = %p", i * 3 + 1, r);
    free(r);
    free(c);
  }
  for (i = 0; i < 3000; i++) {
    /* log-uniform sizes up to 8 MiB, kept alive so size classes fill up and neighbours exist */
    size_t n = (size_t)1 << (nt_rand(&rng) % 23);
    n += nt_rand(&rng) % n;
    if (n > NT_MIB(8)) n = NT_MIB(8);
    void *p = malloc(nt_opaque_size(n));
    CHECKF(p != NULL && ALIGN_OK(p, 16), "malloc(%zu) = %p", n, p);
    if (n <= 65536 && nlive < 2000) {
      keep(p, n);
    } else {
      memset(p, 1, n < 4096 ? n : 4096);
      free(p);
    }
  }
  verify_and_free_all("malloc mix");

  /* ---- aligned allocators: every power of two 1 B .. 1 MiB, several sizes each ---- */
  for (int kind = 0; kind < K_COUNT; kind++) {
    for (a = 1; a <= NT_MIB(1); a <<= 1) {
      if (kind == K_POSIX && a < sizeof(void *)) continue; /* EINVAL, tested in errno_test */
      size_t sizes[] = {1, a > 1 ? a - 1 : 1, a, a + 1, 3 * a, 100, 1000, 100000, 700000};
      for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = aligned(kind, a, sizes[i]);
        if (nlive < 2000 && sizes[i] <= 3 * NT_MIB(1))
          keep(p, sizes[i]);
        else
          free(p);
      }
      /* a run of small blocks at this alignment: distinct, aligned, non-overlapping */
      if (a <= 65536) {
        for (i = 0; i < 32; i++) keep(aligned(kind, a, 24 + i * 8), 24 + i * 8);
      }
    }
    verify_and_free_all(kname[kind]);
  }

  /* interleave alignments so aligned blocks sit between plain ones */
  for (i = 0; i < 1500; i++) {
    size_t al = (size_t)16 << (nt_rand(&rng) % 13); /* 16 B .. 64 KiB */
    size_t n = 1 + nt_rand(&rng) % 5000;
    void *p = aligned((int)(i % K_COUNT), al, n);
    keep(p, n);
    void *q = malloc(nt_opaque_size(1 + nt_rand(&rng) % 300));
    CHECK(q != NULL && ALIGN_OK(q, 16));
    keep(q, malloc_usable_size(q));
  }
  verify_and_free_all("interleaved aligned/plain");

  /* ---- valloc / pvalloc ---- */
  {
    size_t sizes[] = {1, 100, 4095, 4096, 4097, 10000, 65536, 100000, NT_MIB(1) + 1, NT_MIB(3)};
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      size_t n = sizes[i];
      void *v = valloc(nt_opaque_size(n));
      CHECKF(v != NULL && ALIGN_OK(v, page), "valloc(%zu) = %p", n, v);
      CHECK(malloc_usable_size(v) >= n);
      memset(v, 0x11, malloc_usable_size(v));
      size_t rounded = (n + (size_t)page - 1) & ~((size_t)page - 1);
      void *pv = pvalloc(nt_opaque_size(n));
      CHECKF(pv != NULL && ALIGN_OK(pv, page), "pvalloc(%zu) = %p", n, pv);
      CHECKF(malloc_usable_size(pv) >= rounded, "pvalloc(%zu): usable %zu < rounded size %zu", n,
             malloc_usable_size(pv), rounded);
      memset(pv, 0x22, rounded); /* the rounded-up size is ours to use */
      CHECK(nt_find_not(v, n, 0x11) == NT_OK);
      keep(v, n);
      keep(pv, rounded);
    }
    verify_and_free_all("valloc/pvalloc");
  }

  printf("align_test: ok (malloc 16-aligned, aligned allocators 1 B..1 MiB, valloc/pvalloc)\n");
  return 0;
}
