/* Threads racing at the limit (NEBULA_MEM_BUDGET=48M): 4 threads allocate blocks of mixed
 * sizes until the allocator refuses, at the same time. Asserts: every failure is NULL with
 * ENOMEM; the committed bytes never went past the budget (the documented slack for committed
 * memory is zero: the budget is charged with a compare-and-swap before memory is committed);
 * RSS stayed within budget + slack; after everything is freed the threads can allocate again. */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "budget_check.h"
#include "nebula/mem.h"

#define BUDGET (48ull << 20)
#define THREADS 4

static long g_max_rss[THREADS];

static void* worker(void* arg) {
  long id = (long)arg;
  static __thread void* blocks[100000];
  size_t n = 0;
  unsigned x = 12345u + (unsigned)id * 7919u;
  for (int fails = 0; fails < 50;) {
    x = x * 1103515245u + 12345u;
    size_t size = (x >> 8) % 4 == 0 ? ((x >> 12) % (3u << 20)) + 1 : ((x >> 12) % 4000) + 1;
    errno = 0;
    void* p = malloc(size);
    if (p == NULL) {
      CHECKF(errno == ENOMEM, "errno %d", errno);
      fails++;
      continue;
    }
    memset(p, (int)id, size);
    if (n < 100000) blocks[n++] = p;
    else free(p);
    long r = rss_kib();
    if (r > g_max_rss[id]) g_max_rss[id] = r;
  }
  for (size_t i = 0; i < n; i++) free(blocks[i]);
  return NULL;
}

int main(void) {
  CHECK(nebula_mem_is_active());
  CHECK(nebula_mem_get_budget() == BUDGET);
  pthread_t t[THREADS];
  for (long i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, worker, (void*)i) == 0);
  for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
  nebula_mem_stats st;
  nebula_mem_get_stats(&st);
  CHECKF(st.committed_peak <= BUDGET, "committed peak %llu > budget", (unsigned long long)st.committed_peak);
  CHECKF(st.budget_peak >= BUDGET * 8 / 10, "the threads never came near the budget (peak %llu)",
         (unsigned long long)st.budget_peak);
  long max_rss = 0;
  for (int i = 0; i < THREADS; i++)
    if (g_max_rss[i] > max_rss) max_rss = g_max_rss[i];
  CHECKF(max_rss <= (long)(BUDGET >> 10) + 8 * 1024, "RSS %ld KiB", max_rss);
  void* p = malloc(8 << 20);
  CHECK(p != NULL);
  free(p);
  printf("race_test: ok (4 threads at a 48 MiB budget: committed peak %llu KiB, max RSS %ld KiB, %llu failures)\n",
         (unsigned long long)(st.committed_peak >> 10), max_rss, (unsigned long long)st.budget_failures);
  return 0;
}
