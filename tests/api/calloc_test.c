/* calloc returns zeroed memory even when it reuses blocks that were just freed dirty, at every
 * tier (small, medium, large, huge), through every nmemb/size split, after realloc shrinks and
 * after aligned allocations were freed dirty; calloc(0, n) / calloc(n, 0) are freeable. */
#include "../check.h"

#include <malloc.h>

static const size_t tiers[] = {1,     8,      16,      24,      100,     128,      1000,
                               4000,  10000,  32768,   100000,  262144,  1 << 20,  5 << 20,
                               40 << 20};
#define NTIERS (sizeof tiers / sizeof tiers[0])

static void check_zero(const void *p, size_t n, const char *what, size_t sz, unsigned round) {
  size_t bad = nt_find_not(p, n, 0);
  CHECKF(bad == NT_OK, "%s(%zu) round %u: byte %zu of %zu is 0x%02x, not zero", what, sz, round, bad,
         n, ((const unsigned char *)p)[bad]);
}

static void *xcalloc(size_t nmemb, size_t size) {
  void *p = calloc(nt_opaque_size(nmemb), nt_opaque_size(size));
  CHECKF(p != NULL, "calloc(%zu, %zu) failed", nmemb, size);
  CHECKF(((uintptr_t)p & 15) == 0, "calloc(%zu, %zu) = %p not 16-aligned", nmemb, size, p);
  return p;
}

int main(void) {
  CHECK_PRELOAD();
  size_t t, i;
  enum { MAXN = 512 };
  static void *blk[MAXN];

  for (t = 0; t < NTIERS; t++) {
    size_t sz = tiers[t];
    /* how many blocks per round: keep per-round memory around 16-80 MiB at most */
    size_t n = sz <= 1000 ? MAXN : sz <= 100000 ? 128 : sz <= NT_MIB(1) ? 16 : 2;
    unsigned rounds = sz <= 100000 ? 6 : 3;
    for (unsigned r = 0; r < rounds; r++) {
      /* dirty: fill the whole usable size with 0xAB, then free */
      for (i = 0; i < n; i++) {
        blk[i] = malloc(nt_opaque_size(sz));
        CHECK(blk[i] != NULL);
        memset(blk[i], 0xAB, malloc_usable_size(blk[i]));
      }
      for (i = 0; i < n; i++) free(blk[i]);
      /* calloc the same sizes through different nmemb/size splits */
      for (i = 0; i < n; i++) {
        size_t nm, el;
        switch ((i + r) % 4) {
          case 0: nm = 1; el = sz; break;
          case 1: nm = sz; el = 1; break;
          case 2: nm = sz % 8 == 0 ? sz / 8 : sz; el = sz % 8 == 0 ? 8 : 1; break;
          default: nm = sz % 4 == 0 ? sz / 4 : 1; el = sz % 4 == 0 ? 4 : sz; break;
        }
        blk[i] = xcalloc(nm, el);
        CHECK(malloc_usable_size(blk[i]) >= sz);
        check_zero(blk[i], sz, "calloc", sz, r);
        /* dirty it again so the next round and the next calloc see garbage */
        memset(blk[i], 0xAB, malloc_usable_size(blk[i]));
      }
      for (i = 0; i < n; i++) free(blk[i]);
    }
    /* immediate reuse: free dirty then calloc at once, many times (likely the same block) */
    unsigned reps = sz <= 100000 ? 2000 : sz <= NT_MIB(1) ? 50 : 6;
    for (unsigned k = 0; k < reps; k++) {
      void *p = malloc(nt_opaque_size(sz));
      CHECK(p != NULL);
      memset(p, 0xAB, malloc_usable_size(p));
      free(p);
      p = xcalloc(1, sz);
      check_zero(p, sz, "calloc after free", sz, k);
      memset(p, 0xCD, sz);
      free(p);
    }
  }

  /* ---- calloc into memory that a realloc shrink released ---- */
  for (unsigned r = 0; r < 20; r++) {
    size_t big = r < 10 ? 200000 : NT_MIB(3);
    void *p = malloc(nt_opaque_size(big));
    CHECK(p != NULL);
    memset(p, 0xAB, malloc_usable_size(p));
    p = realloc(p, nt_opaque_size(64));
    CHECK(p != NULL);
    for (i = 0; i < 64; i++) CHECK(((unsigned char *)p)[i] == 0xAB);
    for (i = 0; i < 64; i++) {
      size_t sz = 16 + (i * 1031) % 3000;
      blk[i] = xcalloc(1, sz);
      check_zero(blk[i], sz, "calloc after realloc shrink", sz, r);
      memset(blk[i], 0xAB, sz);
    }
    for (i = 0; i < 64; i++) free(blk[i]);
    free(p);
  }

  /* ---- calloc into memory freed from aligned allocations ---- */
  for (unsigned r = 0; r < 10; r++) {
    for (i = 0; i < 64; i++) {
      blk[i] = aligned_alloc((size_t)64 << (i % 10), 5000 + i * 100);
      CHECK(blk[i] != NULL);
      memset(blk[i], 0xAB, malloc_usable_size(blk[i]));
    }
    for (i = 0; i < 64; i++) free(blk[i]);
    for (i = 0; i < 64; i++) {
      size_t sz = 5000 + i * 100;
      blk[i] = xcalloc(sz / 4, 4);
      check_zero(blk[i], sz, "calloc after aligned free", sz, r);
      memset(blk[i], 0xAB, sz);
    }
    for (i = 0; i < 64; i++) free(blk[i]);
  }

  /* ---- degenerate counts ---- */
  {
    void *a = xcalloc(0, 0), *b = xcalloc(0, 100), *c = xcalloc(100, 0);
    free(a);
    free(b);
    free(c);
  }

  printf("calloc_test: ok (%zu tiers up to 40 MiB, dirty reuse, realloc/aligned interplay)\n", NTIERS);
  return 0;
}
