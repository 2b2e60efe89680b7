/* malloc_usable_size is honest: it is >= the request, and writing every usable byte of every
 * live block corrupts nothing (each block's whole usable range holds its own pattern and all of
 * them are verified after all were written, so a usable size that reaches into a neighbour or
 * into allocator metadata shows up as a damaged neighbour or a crash on the next operation).
 * Covers every size 0..2048, larger classes, aligned blocks, realloc'd blocks, and huge blocks. */
#include "../check.h"

#include <malloc.h>

enum { MAXLIVE = 12000 };
static void *ptr[MAXLIVE];
static size_t req[MAXLIVE], use[MAXLIVE];
static uint64_t seeds[MAXLIVE];
static size_t nlive;

static void add(void *p, size_t n) {
  CHECK(p != NULL);
  CHECK(nlive < MAXLIVE);
  size_t u = malloc_usable_size(p);
  CHECKF(u >= n, "malloc_usable_size(%p) = %zu < request %zu", p, u, n);
  /* a usable size absurdly larger than the request would also be a lie worth flagging */
  CHECKF(u <= n + n / 2 + 4096 || u <= NT_MIB(1) || u - n <= NT_MIB(2),
         "malloc_usable_size(%p) = %zu for a request of %zu", p, u, n);
  ptr[nlive] = p;
  req[nlive] = n;
  use[nlive] = u;
  seeds[nlive] = 0x05AB1E00ULL + nlive * 7919;
  nt_fill(p, u, seeds[nlive]);
  nlive++;
}

static void verify_all(const char *phase) {
  for (size_t i = 0; i < nlive; i++) {
    if (!ptr[i]) continue;
    size_t u = malloc_usable_size(ptr[i]);
    CHECKF(u == use[i], "%s: usable size of block %zu changed %zu -> %zu", phase, i, use[i], u);
    size_t bad = nt_verify(ptr[i], use[i], seeds[i]);
    CHECKF(bad == NT_OK, "%s: block %zu (%p, request %zu, usable %zu) damaged at offset %zu", phase, i,
           ptr[i], req[i], use[i], bad);
  }
}

static void free_all(void) {
  for (size_t i = 0; i < nlive; i++) free(ptr[i]);
  nlive = 0;
}

int main(void) {
  CHECK_PRELOAD();
  size_t i;
  uint64_t rng = 7;

  CHECK(malloc_usable_size(NULL) == 0);

  /* every small size, twice, interleaved so same-class blocks are neighbours */
  for (unsigned rep = 0; rep < 2; rep++)
    for (i = 0; i <= 2048; i++) add(malloc(nt_opaque_size(i)), i);
  verify_all("small sizes");
  /* free every other block, reallocate with other sizes into the holes, verify again */
  for (i = 0; i < nlive; i += 2) {
    free(ptr[i]);
    size_t n = nt_rand(&rng) % 2049;
    void *p = malloc(nt_opaque_size(n));
    CHECK(p != NULL);
    size_t u = malloc_usable_size(p);
    CHECK(u >= n);
    ptr[i] = p;
    req[i] = n;
    use[i] = u;
    seeds[i] ^= 0xFFFF;
    nt_fill(p, u, seeds[i]);
  }
  verify_all("small sizes after hole refill");
  free_all();

  /* medium and large, log-uniform up to 4 MiB */
  for (i = 0; i < 500; i++) {
    size_t n = (size_t)1 << (11 + nt_rand(&rng) % 11);
    n += nt_rand(&rng) % n;
    add(malloc(nt_opaque_size(n)), n);
  }
  verify_all("medium/large");
  free_all();

  /* calloc'd, realloc'd, aligned and page-aligned blocks mixed with plain ones */
  for (i = 0; i < 3000; i++) {
    size_t n = 1 + nt_rand(&rng) % 20000;
    void *p;
    switch (i % 6) {
      case 0: p = calloc(1, nt_opaque_size(n)); break;
      case 1:
        p = malloc(nt_opaque_size(n / 2 + 1));
        CHECK(p != NULL);
        p = realloc(p, nt_opaque_size(n));
        break;
      case 2:
        p = malloc(nt_opaque_size(n * 2));
        CHECK(p != NULL);
        p = realloc(p, nt_opaque_size(n)); /* shrunk: usable must not include the released tail */
        break;
      case 3: p = aligned_alloc((size_t)32 << (i % 12), nt_opaque_size(n)); break;
      case 4: p = valloc(nt_opaque_size(n)); break;
      default: p = malloc(nt_opaque_size(n)); break;
    }
    add(p, n);
  }
  verify_all("mixed allocators");
  free_all();

  /* huge blocks: usable size and writes up to the very last usable byte */
  {
    static const size_t huge[] = {5 << 20, (5 << 20) + 1, (40 << 20) - 1, 40 << 20, (64 << 20) + 12345};
    for (i = 0; i < sizeof huge / sizeof huge[0]; i++) add(malloc(nt_opaque_size(huge[i])), huge[i]);
    for (i = 0; i < 64; i++) add(malloc(nt_opaque_size(100 + i)), 100 + i);
    verify_all("huge");
    free_all();
  }

  /* after all that, the allocator still works and its bookkeeping is intact */
  for (i = 0; i < 20000; i++) {
    void *p = malloc(nt_opaque_size(i % 5000));
    CHECK(p != NULL);
    memset(p, 0x77, malloc_usable_size(p));
    free(p);
  }

  printf("usable_test: ok (malloc_usable_size >= request, full usable writes corrupt nothing)\n");
  return 0;
}
