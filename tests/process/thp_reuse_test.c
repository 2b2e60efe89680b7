/* Memory a huge block asked transparent huge pages for (madvise MADV_HUGEPAGE, which the
 * mapping keeps after the block is freed) must not make the segments later made there fault in
 * 2 MiB at their first touch. Main fills and frees eight 30 MiB blocks and trims, so that their
 * chunks are free and clean; then eight threads, alive together, each allocate a few small
 * blocks: each gets a segment of its own, on those chunks. Together they may add only a few MiB
 * of RSS (with the flag left on, each added about 2 MiB where the kernel gives huge pages on
 * madvise or always: 16 MiB). */
#include "../check.h"

#include <malloc.h>
#include <pthread.h>

enum { THREADS = 8, BIG = 30 << 20 };
static pthread_barrier_t ready, done;

static void *worker(void *arg) {
  (void)arg;
  void *p[64];
  for (int i = 0; i < 64; ++i) {
    p[i] = malloc(200);
    CHECK(p[i] != NULL);
    memset(p[i], 1, 200);
  }
  pthread_barrier_wait(&ready);
  pthread_barrier_wait(&done);
  for (int i = 0; i < 64; ++i) free(p[i]);
  return NULL;
}

int main(void) {
  CHECK_PRELOAD();
  void *big[8];
  for (int i = 0; i < 8; ++i) {
    big[i] = malloc(BIG);
    CHECK(big[i] != NULL);
    memset(big[i], 7, BIG);
  }
  for (int i = 0; i < 8; ++i) free(big[i]);
  malloc_trim(0);
  size_t rss0 = nt_rss_bytes();
  pthread_barrier_init(&ready, NULL, THREADS + 1);
  pthread_barrier_init(&done, NULL, THREADS + 1);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; ++i) CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0);
  pthread_barrier_wait(&ready);
  size_t rss1 = nt_rss_bytes();
  pthread_barrier_wait(&done);
  for (int i = 0; i < THREADS; ++i) CHECK(pthread_join(t[i], NULL) == 0);
  CHECKF(rss1 < rss0 + NT_MIB(5), "RSS %zu KiB with %d threads of a few small blocks each, %zu KiB before them",
         rss1 >> 10, THREADS, rss0 >> 10);
  printf("thp_reuse_test: RSS %zu KiB before the threads, %zu KiB with them\n", rss0 >> 10, rss1 >> 10);
  return 0;
}
