/* realloc: realloc(NULL, n) is malloc, realloc(p, 0) frees and returns NULL (glibc),
 * contents survive growing and shrinking between every pair of tiers from 1 B to 64 MiB,
 * byte-by-byte growth, in-place shrink, and many live blocks reallocated at random without
 * overlapping each other. */
#include "../check.h"

#include <malloc.h>

static const size_t tiers[] = {1,      8,       100,      1000,     10000,    100000,
                               1 << 20, 5 << 20, 40 << 20, 64 << 20, 24,       4000,
                               60000,   300000,  2 << 20};
#define NTIERS (sizeof tiers / sizeof tiers[0])

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, nt_opaque_size(n));
  CHECKF(q != NULL, "realloc(%p, %zu) returned NULL", p, n);
  CHECKF(((uintptr_t)q & 15) == 0, "realloc(%zu) = %p not 16-aligned", n, q);
  CHECKF(malloc_usable_size(q) >= n, "realloc(%zu): usable %zu", n, malloc_usable_size(q));
  return q;
}

int main(void) {
  CHECK_PRELOAD();
  size_t i, j;
  uint64_t rng = 99;

  /* ---- realloc(NULL, n) == malloc(n) ---- */
  for (i = 0; i < NTIERS; i++) {
    void *p = realloc(NULL, nt_opaque_size(tiers[i]));
    CHECK(p != NULL && ((uintptr_t)p & 15) == 0);
    CHECK(malloc_usable_size(p) >= tiers[i]);
    nt_fill(p, tiers[i], i);
    CHECK(nt_verify(p, tiers[i], i) == NT_OK);
    free(p);
  }
  {
    void *p = realloc(NULL, nt_opaque_size(0)); /* malloc(0): a unique, freeable pointer */
    CHECK(p != NULL);
    free(p);
  }

  /* ---- realloc(p, 0) frees p and returns NULL (glibc REALLOC_ZERO_BYTES_FREES) ---- */
  for (i = 0; i < NTIERS; i++) {
    void *p = malloc(nt_opaque_size(tiers[i]));
    CHECK(p != NULL);
    nt_fill(p, tiers[i], 5);
    errno = 0;
    void *r = realloc(p, nt_opaque_size(0));
    CHECKF(r == NULL, "realloc(p of %zu, 0) returned %p, glibc returns NULL", tiers[i], r);
  }
  /* Those frees must really have happened: 20000 rounds of malloc(1 MiB)+realloc(p, 0) would
   * otherwise leak 20 GiB of touched memory. RSS must stay bounded. */
  {
    size_t rss0 = nt_rss_bytes();
    for (i = 0; i < 20000; i++) {
      char *p = (char *)malloc(nt_opaque_size(65536));
      CHECK(p != NULL);
      memset(p, (int)i, 65536);
      CHECK(realloc(p, nt_opaque_size(0)) == NULL);
    }
    size_t rss1 = nt_rss_bytes();
    CHECKF(rss1 < rss0 + NT_MIB(64), "realloc(p, 0) leaks: RSS %zu MiB -> %zu MiB", rss0 >> 20,
           rss1 >> 20);
  }

  /* ---- every pair of tiers: grow and shrink, contents preserved ---- */
  for (i = 0; i < NTIERS; i++) {
    for (j = 0; j < NTIERS; j++) {
      size_t a = tiers[i], b = tiers[j];
      uint64_t seed = (i << 8) | j;
      void *p = malloc(nt_opaque_size(a));
      CHECK(p != NULL);
      nt_fill(p, a, seed);
      void *q = xrealloc(p, b);
      size_t keep = a < b ? a : b;
      size_t bad = nt_verify(q, keep, seed);
      CHECKF(bad == NT_OK, "realloc %zu -> %zu lost content at offset %zu", a, b, bad);
      /* the new tail is writable */
      memset((char *)q + keep, 0x3C, b - keep);
      CHECK(nt_verify(q, keep, seed) == NT_OK);
      free(q);
    }
  }

  /* ---- one block walked up through all tiers and back down ---- */
  {
    static const size_t walk[] = {1, 8, 100, 1000, 10000, 100000, 1 << 20, 5 << 20, 40 << 20, 64 << 20};
    size_t nw = sizeof walk / sizeof walk[0];
    void *p = xrealloc(NULL, walk[0]);
    nt_fill(p, walk[0], 4242);
    for (i = 1; i < nw; i++) {
      p = xrealloc(p, walk[i]);
      CHECKF(nt_verify(p, walk[i - 1], 4242) == NT_OK, "walk up to %zu lost content", walk[i]);
      nt_fill(p, walk[i], 4242); /* prefix unchanged: same seed, same offsets */
    }
    for (i = nw - 1; i-- > 0;) {
      p = xrealloc(p, walk[i]);
      CHECKF(nt_verify(p, walk[i], 4242) == NT_OK, "walk down to %zu lost content", walk[i]);
    }
    free(p);
  }

  /* ---- byte-by-byte growth, then shrink step by step ---- */
  {
    unsigned char *p = NULL;
    const size_t top = 20000;
    for (i = 1; i <= top; i++) {
      p = (unsigned char *)xrealloc(p, i);
      p[i - 1] = (unsigned char)(i * 7 + 3);
      if ((i & 1023) == 0 || i == top)
        for (j = 0; j < i; j++)
          CHECKF(p[j] == (unsigned char)((j + 1) * 7 + 3), "growth to %zu: byte %zu lost", i, j);
    }
    for (i = top; i >= 1; i -= 97) {
      p = (unsigned char *)xrealloc(p, i);
      for (j = i > 64 ? i - 64 : 0; j < i; j++)
        CHECKF(p[j] == (unsigned char)((j + 1) * 7 + 3), "shrink to %zu: byte %zu lost", i, j);
      if (i <= 97) break;
    }
    free(p);
  }

  /* ---- shrinking a huge block and reusing the released tail ---- */
  {
    void *p = malloc(nt_opaque_size(NT_MIB(40)));
    CHECK(p != NULL);
    nt_fill(p, NT_MIB(40), 808);
    p = xrealloc(p, 1000);
    CHECK(nt_verify(p, 1000, 808) == NT_OK);
    void *others[16];
    for (i = 0; i < 16; i++) {
      others[i] = malloc(nt_opaque_size(NT_MIB(2)));
      CHECK(others[i] != NULL);
      nt_fill(others[i], NT_MIB(2), 900 + i);
    }
    CHECK(nt_verify(p, 1000, 808) == NT_OK);
    p = xrealloc(p, NT_MIB(6));
    CHECK(nt_verify(p, 1000, 808) == NT_OK);
    memset((char *)p + 1000, 0, NT_MIB(6) - 1000);
    for (i = 0; i < 16; i++) {
      CHECKF(nt_verify(others[i], NT_MIB(2), 900 + i) == NT_OK, "neighbour %zu damaged", i);
      free(others[i]);
    }
    free(p);
  }

  /* ---- many live blocks reallocated at random ---- */
  {
    enum { SLOTS = 128 };
    void *p[SLOTS];
    size_t n[SLOTS];
    uint64_t seed[SLOTS];
    for (i = 0; i < SLOTS; i++) {
      p[i] = NULL;
      n[i] = 0;
      seed[i] = 0;
    }
    for (unsigned it = 0; it < 12000; it++) {
      size_t s = nt_rand(&rng) % SLOTS;
      if (p[s]) {
        size_t bad = nt_verify(p[s], n[s], seed[s]);
        CHECKF(bad == NT_OK, "iteration %u: slot %zu (%zu bytes) damaged at %zu", it, s, n[s], bad);
      }
      unsigned r = (unsigned)(nt_rand(&rng) % 100);
      size_t nn;
      if (r < 70)
        nn = 1 + nt_rand(&rng) % 2000;
      else if (r < 95)
        nn = 1 + nt_rand(&rng) % 200000;
      else if (r < 99)
        nn = 1 + nt_rand(&rng) % NT_MIB(3);
      else
        nn = NT_MIB(4) + nt_rand(&rng) % NT_MIB(8);
      if (p[s] && nt_rand(&rng) % 8 == 0) {
        free(p[s]);
        p[s] = NULL;
        n[s] = 0;
        continue;
      }
      p[s] = xrealloc(p[s], nn);
      if (n[s]) {
        size_t keep = n[s] < nn ? n[s] : nn;
        size_t bad = nt_verify(p[s], keep, seed[s]);
        CHECKF(bad == NT_OK, "iteration %u: realloc %zu -> %zu lost content at %zu", it, n[s], nn, bad);
      }
      seed[s] = ((uint64_t)it << 8) ^ s;
      n[s] = nn;
      nt_fill(p[s], nn, seed[s]);
    }
    for (i = 0; i < SLOTS; i++) {
      if (p[i]) CHECK(nt_verify(p[i], n[i], seed[i]) == NT_OK);
      free(p[i]);
    }
  }

  /* ---- reallocarray as a checked realloc ---- */
  {
    int *a = (int *)reallocarray(NULL, 1000, sizeof(int));
    CHECK(a != NULL);
    for (i = 0; i < 1000; i++) a[i] = (int)i * 3;
    a = (int *)reallocarray(a, 300000, sizeof(int));
    CHECK(a != NULL);
    for (i = 0; i < 1000; i++) CHECK(a[i] == (int)i * 3);
    a = (int *)reallocarray(a, 10, sizeof(int));
    CHECK(a != NULL);
    for (i = 0; i < 10; i++) CHECK(a[i] == (int)i * 3);
    free(a);
  }

  printf("realloc_test: ok (NULL/0 cases, %zu x %zu tier pairs up to 64 MiB, random reallocs)\n",
         NTIERS, NTIERS);
  return 0;
}
