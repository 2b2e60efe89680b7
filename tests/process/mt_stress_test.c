/* 8 threads doing random malloc/calloc/aligned_alloc/realloc/free with content checks. Every
 * block is filled with a pattern derived from its address and size at the time it was written,
 * and verified before every free and realloc (and after realloc, the preserved prefix against
 * the old pattern). Some blocks are handed to other threads through a shared, mutex-protected
 * array and freed or reallocated there (cross-thread free). Fixed amount of work (no timing):
 * about 2-3 s on 2 cores. */
#include "../check.h"

#include <malloc.h>
#include <pthread.h>

enum { THREADS = 8, SLOTS = 256, SHARED = 512, ITERS = 150000 };

struct blk {
  void *p;
  size_t n;
  uint64_t seed;
};

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blk shared[SHARED];
static unsigned long handed_over[THREADS], taken_over[THREADS];

static uint64_t seed_of(const void *p, size_t n) {
  return ((uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ULL) ^ (n * 0xC2B2AE3D27D4EB4FULL);
}

static void put(struct blk *b, void *p, size_t n) {
  b->p = p;
  b->n = n;
  b->seed = seed_of(p, n);
  nt_fill(p, n, b->seed);
}

static void verify(const struct blk *b, const char *what) {
  CHECKF(malloc_usable_size(b->p) >= b->n, "%s: usable size %zu < %zu", what, malloc_usable_size(b->p),
         b->n);
  size_t bad = nt_verify(b->p, b->n, b->seed);
  CHECKF(bad == NT_OK, "%s: block %p (%zu bytes) damaged at offset %zu", what, b->p, b->n, bad);
}

static size_t pick_size(uint64_t *rng) {
  unsigned r = (unsigned)(nt_rand(rng) % 10000);
  if (r < 7000) return 1 + nt_rand(rng) % 256;
  if (r < 9300) return 257 + nt_rand(rng) % 16000;
  if (r < 9950) return 16384 + nt_rand(rng) % 250000;
  if (r < 9995) return 262144 + nt_rand(rng) % NT_MIB(2);
  return NT_MIB(2) + nt_rand(rng) % NT_MIB(6);
}

static void *new_block(uint64_t *rng, size_t n) {
  void *p;
  switch (nt_rand(rng) % 8) {
    case 0:
      p = calloc(1, n);
      CHECK(p != NULL);
      CHECKF(nt_find_not(p, n, 0) == NT_OK, "calloc(%zu) not zeroed", n);
      return p;
    case 1: {
      size_t a = (size_t)16 << (nt_rand(rng) % 9); /* 16 .. 4096 */
      p = aligned_alloc(a, n);
      CHECK(p != NULL && ((uintptr_t)p & (a - 1)) == 0);
      return p;
    }
    default:
      p = malloc(n);
      CHECK(p != NULL);
      return p;
  }
}

static void *thread_main(void *arg) {
  unsigned id = (unsigned)(uintptr_t)arg;
  uint64_t rng = 0xABCDEF + id * 7777;
  struct blk mine[SLOTS];
  memset(mine, 0, sizeof mine);
  for (unsigned it = 0; it < ITERS; it++) {
    struct blk *b = &mine[nt_rand(&rng) % SLOTS];
    unsigned act = (unsigned)(nt_rand(&rng) % 100);
    if (!b->p) {
      size_t n = pick_size(&rng);
      put(b, new_block(&rng, n), n);
      continue;
    }
    verify(b, "before operation");
    if (act < 45) {
      free(b->p);
      b->p = NULL;
    } else if (act < 80) {
      size_t nn = pick_size(&rng);
      void *q = realloc(b->p, nn);
      CHECK(q != NULL);
      struct blk old = *b;
      old.p = q;
      old.n = old.n < nn ? old.n : nn;
      verify(&old, "realloc kept prefix");
      put(b, q, nn);
    } else {
      /* swap with the shared array: hand ours over, adopt whatever another thread left */
      pthread_mutex_lock(&shared_lock);
      struct blk *s = &shared[nt_rand(&rng) % SHARED];
      struct blk other = *s;
      *s = *b;
      pthread_mutex_unlock(&shared_lock);
      handed_over[id]++;
      b->p = NULL;
      if (other.p) {
        verify(&other, "adopted from another thread");
        taken_over[id]++;
        if (nt_rand(&rng) & 1) {
          free(other.p); /* cross-thread free */
        } else {
          size_t nn = pick_size(&rng);
          void *q = realloc(other.p, nn); /* cross-thread realloc */
          CHECK(q != NULL);
          struct blk keep = other;
          keep.p = q;
          keep.n = keep.n < nn ? keep.n : nn;
          verify(&keep, "cross-thread realloc kept prefix");
          put(b, q, nn);
        }
      }
    }
  }
  for (unsigned s = 0; s < SLOTS; s++)
    if (mine[s].p) {
      verify(&mine[s], "at thread exit");
      free(mine[s].p);
    }
  return NULL;
}

int main(void) {
  CHECK_PRELOAD();
  pthread_t th[THREADS];
  for (uintptr_t i = 0; i < THREADS; i++) CHECK(pthread_create(&th[i], NULL, thread_main, (void *)i) == 0);
  for (int i = 0; i < THREADS; i++) CHECK(pthread_join(th[i], NULL) == 0);
  unsigned long handed = 0, taken = 0;
  for (int i = 0; i < THREADS; i++) {
    handed += handed_over[i];
    taken += taken_over[i];
  }
  size_t left = 0;
  for (int i = 0; i < SHARED; i++)
    if (shared[i].p) {
      verify(&shared[i], "left in the shared array");
      free(shared[i].p);
      left++;
    }
  CHECK(handed > 1000 && taken > 1000); /* the cross-thread path really ran */
  printf("mt_stress_test: ok (%d threads x %d ops, %lu blocks handed over, %lu adopted, %zu freed by main)\n",
         THREADS, ITERS, handed, taken, left);
  return 0;
}
