/* A thread per task: 300 threads, one after another, each allocating 64 blocks of 64 to 2080
 * bytes, writing them and freeing them before it exits (a server that starts a thread for each
 * request). The next thread must reuse the memory the last one left, not fault it in again:
 * an exiting thread that purged its free slices at once cost 32 page faults per thread (the
 * blocks' pages, faulted back by the next one; 2.2 x glibc's time). Bound: 8 minor faults per
 * thread on average, counted over the last 250 threads (the first ones make the memory; glibc's
 * thread stacks come from its stack cache and fault nothing). The blocks are checked before each
 * free. */
#include "../check.h"

#include <pthread.h>
#include <sys/resource.h>

enum { THREADS = 300, WARMUP = 50, BLOCKS = 64 };

static int bad;

static void *task(void *arg) {
  uint64_t seed = (uint64_t)(uintptr_t)arg;
  void *b[BLOCKS];
  for (int i = 0; i < BLOCKS; i++) {
    size_t n = 64 + (size_t)i * 32;
    b[i] = malloc(nt_opaque_size(n));
    if (b[i] == NULL) {
      bad = 1;
      return NULL;
    }
    nt_fill(b[i], n, seed + (uint64_t)i);
  }
  for (int i = 0; i < BLOCKS; i++) {
    if (nt_verify(b[i], 64 + (size_t)i * 32, seed + (uint64_t)i) != NT_OK) bad = 1;
    free(b[i]);
  }
  return NULL;
}

static long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

int main(void) {
  CHECK_PRELOAD();
  long f0 = 0;
  for (int t = 0; t < THREADS; t++) {
    if (t == WARMUP) f0 = minor_faults();
    pthread_t th;
    CHECK(pthread_create(&th, NULL, task, (void *)(uintptr_t)(t * 1000)) == 0);
    CHECK(pthread_join(th, NULL) == 0);
  }
  long faults = minor_faults() - f0;
  CHECKF(!bad, "a block's contents changed, or malloc failed");
  double per = (double)faults / (THREADS - WARMUP);
  printf("thread_churn: %ld minor faults over %d threads (%.1f per thread)\n", faults,
         THREADS - WARMUP, per);
  CHECKF(per <= 8.0, "%.1f page faults per thread (bound: 8): each thread faulted in again the "
         "memory the one before it left", per);
  return 0;
}
