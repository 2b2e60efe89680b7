/* Failure paths: NULL + ENOMEM for impossible sizes, EINVAL rules for the aligned allocators,
 * and failed reallocations leaving the old block intact. Semantics as glibc 2.36 implements
 * them (checked by running this file against glibc: tests/glibc_baseline.sh). */
#include "../check.h"

#include <malloc.h>
#include <stddef.h>

#define EXPECT_ENOMEM_NULL(call)                                                        \
  do {                                                                                  \
    errno = 0;                                                                          \
    void *r_ = (call);                                                                  \
    CHECKF(r_ == NULL, "%s returned %p", #call, r_);                                   \
    CHECKF(errno == ENOMEM, "%s: errno %d, expected ENOMEM", #call, errno);            \
  } while (0)

#define EXPECT_EINVAL_NULL(call)                                                        \
  do {                                                                                  \
    errno = 0;                                                                          \
    void *r_ = (call);                                                                  \
    CHECKF(r_ == NULL, "%s returned %p", #call, r_);                                   \
    CHECKF(errno == EINVAL, "%s: errno %d, expected EINVAL", #call, errno);            \
  } while (0)

static size_t huge_sizes[] = {
    SIZE_MAX,
    SIZE_MAX - 1,
    SIZE_MAX - 15,
    SIZE_MAX - 4095,
    SIZE_MAX - (1u << 20),
    (size_t)PTRDIFF_MAX + 1,
    (size_t)PTRDIFF_MAX,
    (size_t)PTRDIFF_MAX - 4095,
    (size_t)1 << 62,
    (size_t)1 << 50, /* 1 PiB: more than any address space we can map */
};
#define NHUGE (sizeof huge_sizes / sizeof huge_sizes[0])

static void check_block_usable_after_failure(void *p, size_t n, uint64_t seed) {
  CHECKF(nt_verify(p, n, seed) == NT_OK, "old block of %zu bytes damaged by a failed call", n);
  /* the allocator must still work after a failure */
  void *q = malloc(nt_opaque_size(n));
  CHECK(q != NULL);
  nt_fill(q, n, seed + 1);
  CHECK(nt_verify(p, n, seed) == NT_OK);
  free(q);
}

int main(void) {
  CHECK_PRELOAD();
  size_t i, j;

  /* ---- malloc ---- */
  for (i = 0; i < NHUGE; i++) EXPECT_ENOMEM_NULL(malloc(nt_opaque_size(huge_sizes[i])));

  /* ---- calloc: overflow of nmemb * size, and impossible products ---- */
  EXPECT_ENOMEM_NULL(calloc(nt_opaque_size(SIZE_MAX / 2), nt_opaque_size(3)));
  EXPECT_ENOMEM_NULL(calloc(nt_opaque_size(SIZE_MAX), nt_opaque_size(SIZE_MAX)));
  EXPECT_ENOMEM_NULL(calloc(nt_opaque_size((size_t)1 << 32), nt_opaque_size((size_t)1 << 32)));
  EXPECT_ENOMEM_NULL(calloc(nt_opaque_size(((size_t)1 << 32) + 1), nt_opaque_size((size_t)1 << 32)));
  EXPECT_ENOMEM_NULL(calloc(nt_opaque_size(2), nt_opaque_size(SIZE_MAX / 2 + 1)));
  EXPECT_ENOMEM_NULL(calloc(nt_opaque_size(1), nt_opaque_size(SIZE_MAX)));
  EXPECT_ENOMEM_NULL(calloc(nt_opaque_size(SIZE_MAX), nt_opaque_size(1)));
  for (i = 0; i < NHUGE; i++) EXPECT_ENOMEM_NULL(calloc(1, nt_opaque_size(huge_sizes[i])));

  /* ---- reallocarray: overflow with NULL and with a live block ---- */
  EXPECT_ENOMEM_NULL(reallocarray(NULL, nt_opaque_size(SIZE_MAX / 2), nt_opaque_size(3)));
  EXPECT_ENOMEM_NULL(reallocarray(NULL, nt_opaque_size((size_t)1 << 33), nt_opaque_size((size_t)1 << 33)));
  {
    size_t n = 1000;
    char *p = (char *)malloc(n);
    CHECK(p != NULL);
    nt_fill(p, n, 77);
    EXPECT_ENOMEM_NULL(reallocarray(p, nt_opaque_size(SIZE_MAX / 4), nt_opaque_size(5)));
    check_block_usable_after_failure(p, n, 77);
    /* a valid reallocarray still works on the same block */
    char *q = (char *)reallocarray(p, 250, 8);
    CHECK(q != NULL);
    CHECK(nt_verify(q, n, 77) == NT_OK);
    free(q);
  }

  /* ---- realloc to an impossible size leaves the old block intact, at every tier ---- */
  {
    static const size_t tiers[] = {1, 8, 100, 1000, 10000, 100000, 1 << 20, 5 << 20};
    for (j = 0; j < sizeof tiers / sizeof tiers[0]; j++) {
      size_t n = tiers[j];
      void *p = malloc(nt_opaque_size(n));
      CHECK(p != NULL);
      nt_fill(p, n, 1000 + j);
      for (i = 0; i < NHUGE; i++) {
        EXPECT_ENOMEM_NULL(realloc(p, nt_opaque_size(huge_sizes[i])));
        CHECKF(nt_verify(p, n, 1000 + j) == NT_OK, "realloc(%zu -> %zu) failure damaged the block", n,
               huge_sizes[i]);
      }
      check_block_usable_after_failure(p, n, 1000 + j);
      CHECK(malloc_usable_size(p) >= n);
      free(p);
    }
  }

  /* ---- posix_memalign: EINVAL is returned, errno untouched ---- */
  {
    static const size_t bad_align[] = {0, 1, 2, 3, 4, 5, 6, 7, 12, 24, 48, 96, 100, 4097, 3u << 20,
                                       SIZE_MAX, SIZE_MAX / 2 + 2, (size_t)1 << 63 | 8};
    for (i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
      void *out = (void *)0x1234;
      errno = 4242;
      int r = posix_memalign(&out, nt_opaque_size(bad_align[i]), 64);
      CHECKF(r == EINVAL, "posix_memalign(align=%zu) returned %d, expected EINVAL", bad_align[i], r);
      CHECKF(errno == 4242, "posix_memalign(align=%zu) changed errno to %d", bad_align[i], errno);
    }
    /* sizeof(void*) is the smallest valid alignment */
    void *out = NULL;
    errno = 4242;
    CHECK(posix_memalign(&out, sizeof(void *), 64) == 0);
    CHECK(errno == 4242);
    CHECK(out != NULL && ((uintptr_t)out % sizeof(void *)) == 0);
    free(out);
    /* impossible size with a valid alignment: ENOMEM returned */
    for (i = 0; i < NHUGE; i++) {
      out = NULL;
      int r = posix_memalign(&out, 64, nt_opaque_size(huge_sizes[i]));
      CHECKF(r == ENOMEM, "posix_memalign(64, %zu) returned %d, expected ENOMEM", huge_sizes[i], r);
    }
    int r = posix_memalign(&out, (size_t)1 << 20, nt_opaque_size(SIZE_MAX - (1u << 19)));
    CHECK(r == ENOMEM);
  }

  /* ---- memalign / aligned_alloc ----
   * glibc 2.36 (Debian 12) does NOT reject a non-power-of-two alignment in aligned_alloc or
   * memalign: it rounds the alignment up to the next power of two (aligned_alloc is an alias
   * of memalign there). An alignment above SIZE_MAX/2+1 is EINVAL; an impossible size with a
   * valid alignment is ENOMEM. We assert exactly that behaviour. */
  {
    static const size_t npot[] = {24, 48, 80, 96, 100, 192, 3000, 5000, 12288, 40000, 3u << 18};
    for (i = 0; i < sizeof npot / sizeof npot[0]; i++) {
      size_t a = npot[i], next = 1;
      while (next < a) next <<= 1;
      void *p;
      errno = 0;
      p = aligned_alloc(nt_opaque_size(a), 200);
      CHECKF(p != NULL, "aligned_alloc(%zu, 200) failed (glibc rounds the alignment up)", a);
      CHECKF(((uintptr_t)p % next) == 0, "aligned_alloc(%zu) = %p not aligned to %zu", a, p, next);
      memset(p, 0x5A, 200);
      free(p);
      p = memalign(nt_opaque_size(a), 200);
      CHECKF(p != NULL, "memalign(%zu, 200) failed (glibc rounds the alignment up)", a);
      CHECKF(((uintptr_t)p % next) == 0, "memalign(%zu) = %p not aligned to %zu", a, p, next);
      memset(p, 0x5A, 200);
      free(p);
    }
    /* alignment 0 and small alignments behave like malloc */
    void *p = aligned_alloc(nt_opaque_size(0), 10);
    CHECK(p != NULL && ((uintptr_t)p % 16) == 0);
    free(p);
    p = memalign(nt_opaque_size(0), 10);
    CHECK(p != NULL && ((uintptr_t)p % 16) == 0);
    free(p);
    /* alignments that cannot be a power of two */
    EXPECT_EINVAL_NULL(memalign(nt_opaque_size(SIZE_MAX), 16));
    EXPECT_EINVAL_NULL(memalign(nt_opaque_size(SIZE_MAX / 2 + 2), 16));
    EXPECT_EINVAL_NULL(aligned_alloc(nt_opaque_size(SIZE_MAX), 16));
    EXPECT_EINVAL_NULL(aligned_alloc(nt_opaque_size(SIZE_MAX / 2 + 2), 16));
    /* impossible sizes */
    for (i = 0; i < NHUGE; i++) {
      EXPECT_ENOMEM_NULL(memalign(64, nt_opaque_size(huge_sizes[i])));
      EXPECT_ENOMEM_NULL(aligned_alloc(4096, nt_opaque_size(huge_sizes[i])));
    }
    EXPECT_ENOMEM_NULL(memalign(nt_opaque_size((size_t)1 << 63), 16));
    EXPECT_ENOMEM_NULL(valloc(nt_opaque_size(SIZE_MAX - 100)));
    EXPECT_ENOMEM_NULL(pvalloc(nt_opaque_size(SIZE_MAX - 100)));
    EXPECT_ENOMEM_NULL(valloc(nt_opaque_size((size_t)PTRDIFF_MAX + 1)));
    EXPECT_ENOMEM_NULL(pvalloc(nt_opaque_size((size_t)PTRDIFF_MAX + 1)));
  }

  /* ---- success does not clobber errno semantics: a failure after success still reports ---- */
  {
    void *blocks[64];
    for (i = 0; i < 64; i++) {
      blocks[i] = malloc(nt_opaque_size(16 * (i + 1)));
      CHECK(blocks[i] != NULL);
      EXPECT_ENOMEM_NULL(malloc(nt_opaque_size(SIZE_MAX - i)));
    }
    for (i = 0; i < 64; i++) free(blocks[i]);
  }

  printf("errno_test: ok (ENOMEM/EINVAL paths, failed realloc keeps the block)\n");
  return 0;
}
