/* 2000 short-lived threads, created in batches of 8 concurrent ones, each allocating and
 * freeing a few hundred blocks of mixed sizes and leaving some blocks behind for the main
 * thread to free later (after the thread has exited). Asserts that all contents survive, that
 * RSS after the first 2000 threads is under 64 MiB, and that another 2000 threads do not make
 * the process bigger: memory of dead threads' heaps is reused, not accumulated.
 * The growth check compares RSS after malloc_trim(0) at both points, so it measures what the
 * allocator retains rather than when its delayed purge happens to run (the raw RSS right
 * after the threads swings by several MiB with purge timing); the raw RSS gets a looser bound. */
#include "../check.h"

#include <malloc.h>
#include <pthread.h>

enum { BATCH = 8, THREADS = 2000, PER_THREAD = 300, LEFT_PER_THREAD = 12 };

struct blk {
  void *p;
  size_t n;
  uint64_t seed;
};

/* blocks left behind by threads, freed by main after a delay of a few batches */
static pthread_mutex_t left_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blk left[BATCH * LEFT_PER_THREAD * 4];
static size_t nleft;

static size_t pick_size(uint64_t *rng) {
  unsigned r = (unsigned)(nt_rand(rng) % 100);
  if (r < 70) return 1 + nt_rand(rng) % 256;
  if (r < 92) return 256 + nt_rand(rng) % 8192;
  if (r < 99) return 8192 + nt_rand(rng) % 120000;
  return 131072 + nt_rand(rng) % 900000;
}

static void *thread_body(void *arg) {
  uint64_t rng = (uintptr_t)arg * 0x9E3779B97F4A7C15ULL + 1;
  struct blk b[PER_THREAD];
  for (int i = 0; i < PER_THREAD; i++) {
    b[i].n = pick_size(&rng);
    b[i].p = (i % 5 == 0) ? calloc(1, b[i].n) : malloc(b[i].n);
    CHECK(b[i].p != NULL);
    b[i].seed = nt_rand(&rng);
    nt_fill(b[i].p, b[i].n, b[i].seed);
    /* free some of the earlier ones as we go, so the thread's heap recycles */
    if (i >= 10 && (nt_rand(&rng) & 1)) {
      int j = (int)(nt_rand(&rng) % (uint64_t)i);
      if (b[j].p) {
        CHECK(nt_verify(b[j].p, b[j].n, b[j].seed) == NT_OK);
        free(b[j].p);
        b[j].p = NULL;
      }
    }
  }
  int handed = 0;
  for (int i = 0; i < PER_THREAD; i++) {
    if (!b[i].p) continue;
    size_t bad = nt_verify(b[i].p, b[i].n, b[i].seed);
    CHECKF(bad == NT_OK, "thread block %d (%zu bytes) damaged at %zu", i, b[i].n, bad);
    if (handed < LEFT_PER_THREAD && b[i].n < 65536) {
      pthread_mutex_lock(&left_lock);
      CHECK(nleft < sizeof left / sizeof left[0]);
      left[nleft++] = b[i];
      pthread_mutex_unlock(&left_lock);
      handed++;
    } else {
      free(b[i].p);
    }
  }
  return NULL;
}

static void free_left(size_t keep) {
  /* free all but the `keep` most recent blocks (so blocks outlive their thread for a while) */
  pthread_mutex_lock(&left_lock);
  size_t nfree = nleft > keep ? nleft - keep : 0;
  for (size_t i = 0; i < nfree; i++) {
    size_t bad = nt_verify(left[i].p, left[i].n, left[i].seed);
    CHECKF(bad == NT_OK, "left-behind block (%zu bytes) damaged at %zu after its thread exited", left[i].n,
           bad);
    free(left[i].p);
  }
  memmove(left, left + nfree, (nleft - nfree) * sizeof left[0]);
  nleft -= nfree;
  pthread_mutex_unlock(&left_lock);
}

static void run_threads(unsigned base) {
  pthread_attr_t attr;
  CHECK(pthread_attr_init(&attr) == 0);
  CHECK(pthread_attr_setstacksize(&attr, 256 * 1024) == 0);
  for (unsigned t = 0; t < THREADS; t += BATCH) {
    pthread_t th[BATCH];
    for (unsigned k = 0; k < BATCH; k++)
      CHECK(pthread_create(&th[k], &attr, thread_body, (void *)(uintptr_t)(base + t + k)) == 0);
    for (unsigned k = 0; k < BATCH; k++) CHECK(pthread_join(th[k], NULL) == 0);
    free_left(BATCH * LEFT_PER_THREAD * 2);
  }
  free_left(0);
  pthread_attr_destroy(&attr);
}

int main(void) {
  CHECK_PRELOAD();
  size_t rss_start = nt_rss_bytes();

  run_threads(0);
  size_t rss1 = nt_rss_bytes();
  CHECKF(rss1 < NT_MIB(64), "RSS after %d threads: %zu MiB (start %zu MiB), bound 64 MiB", THREADS,
         rss1 >> 20, rss_start >> 20);
  malloc_trim(0);
  size_t rss1t = nt_rss_bytes();

  run_threads(THREADS);
  size_t rss2 = nt_rss_bytes();
  CHECKF(rss2 < NT_MIB(64), "RSS after %d more threads: %zu MiB, bound 64 MiB", THREADS, rss2 >> 20);
  CHECKF(rss2 <= rss1 + NT_MIB(16), "RSS grew from %zu MiB to %zu MiB over another %d threads", rss1 >> 20,
         rss2 >> 20, THREADS);
  malloc_trim(0);
  size_t rss2t = nt_rss_bytes();
  CHECKF(rss2t <= rss1t + NT_MIB(8),
         "after malloc_trim(0), RSS grew from %zu MiB to %zu MiB over another %d threads: dead threads' "
         "memory is retained, not reused",
         rss1t >> 20, rss2t >> 20, THREADS);

  printf("threads_rss_test: ok (2 x %d threads; RSS start %zu MiB, after %zu MiB (trimmed %zu MiB), "
         "after again %zu MiB (trimmed %zu MiB))\n",
         THREADS, rss_start >> 20, rss1 >> 20, rss1t >> 20, rss2 >> 20, rss2t >> 20);
  return 0;
}
