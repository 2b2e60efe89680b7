/* Pressure callbacks, with the budget set through the C API.
 * Asserts: each level is reported once per upward crossing, in order, with the right level and
 * previous level; going down is reported too; a callback that allocates and frees does not
 * deadlock and does not recurse; at the limit a callback that frees its cache lets the failing
 * allocation succeed; registering and unregistering from several threads while another
 * thread crosses levels is safe; an unregistered callback is never called again. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "budget_check.h"
#include "nebula/mem.h"

#define MIB (1ull << 20)
#define BUDGET (100 * MIB)

static int g_events[64][2];
static int g_event_count = 0;
static int g_alloc_in_callback = 0;

static void recorder(const nebula_mem_pressure_event* e, void* ctx) {
  (void)ctx;
  if (g_event_count < 64) {
    g_events[g_event_count][0] = e->level;
    g_events[g_event_count][1] = e->previous;
  }
  g_event_count++;
  /* allocating and freeing inside a callback must work (and not call us again) */
  void* p = malloc(1000);
  CHECK(p != NULL);
  memset(p, 3, 1000);
  free(p);
  void* big = malloc(3 * MIB);
  if (big) free(big);
  g_alloc_in_callback++;
}

/* A cache that empties itself at the critical level. */
static void* g_cache[64];
static int g_cache_n = 0;
static int g_cache_drops = 0;
static void cache_cb(const nebula_mem_pressure_event* e, void* ctx) {
  (void)ctx;
  if (e->level != NEBULA_MEM_PRESSURE_CRITICAL) return;
  CHECK(e->requested > 0);
  for (int i = 0; i < g_cache_n; i++) free(g_cache[i]);
  g_cache_n = 0;
  g_cache_drops++;
}

static atomic_int g_stop;
static atomic_long g_churn_calls;
static void churn_cb(const nebula_mem_pressure_event* e, void* ctx) {
  (void)e;
  atomic_fetch_add((atomic_long*)ctx, 1);
}
static void* registrar(void* arg) {
  (void)arg;
  long count = 0;
  while (!atomic_load(&g_stop) || count < 200) {
    uint64_t h = nebula_mem_pressure_register(churn_cb, &g_churn_calls);
    CHECK(h != 0);
    CHECK(nebula_mem_pressure_unregister(h) == 0);
    CHECK(nebula_mem_pressure_unregister(h) == -1); /* twice: unknown */
    count++;
  }
  return NULL;
}

int main(void) {
  CHECK(nebula_mem_is_active());
  nebula_mem_stats st0;
  nebula_mem_get_stats(&st0);
  CHECK(nebula_mem_set_budget(BUDGET) == 0);
  CHECK(nebula_mem_get_budget() == BUDGET);
  uint64_t h = nebula_mem_pressure_register(recorder, NULL);
  CHECK(h != 0);

  /* Climb to ~90% in 1 MiB blocks: low (70) and medium (85) once each, not high (95). */
  static void* blocks[200];
  int n = 0;
  for (;;) {
    nebula_mem_stats st;
    nebula_mem_get_stats(&st);
    if (st.committed_bytes >= BUDGET * 90 / 100) break;
    blocks[n] = malloc(MIB);
    CHECK(blocks[n] != NULL);
    memset(blocks[n], 1, MIB);
    n++;
  }
  CHECKF(g_event_count == 2, "%d events on the way to 90%%", g_event_count);
  CHECK(g_events[0][0] == NEBULA_MEM_PRESSURE_LOW && g_events[0][1] == NEBULA_MEM_PRESSURE_NONE);
  CHECK(g_events[1][0] == NEBULA_MEM_PRESSURE_MEDIUM && g_events[1][1] == NEBULA_MEM_PRESSURE_LOW);
  CHECK(nebula_mem_pressure_level_now() == NEBULA_MEM_PRESSURE_MEDIUM);
  CHECK(g_alloc_in_callback == 2);

  /* Down: free everything and trim: medium -> low -> none reported. */
  for (int i = 0; i < n; i++) free(blocks[i]);
  nebula_mem_collect();
  free(malloc(10)); /* a safe point */
  CHECKF(g_event_count == 4, "%d events after freeing", g_event_count);
  CHECK(g_events[2][0] == NEBULA_MEM_PRESSURE_LOW && g_events[2][1] == NEBULA_MEM_PRESSURE_MEDIUM);
  CHECK(g_events[3][0] == NEBULA_MEM_PRESSURE_NONE && g_events[3][1] == NEBULA_MEM_PRESSURE_LOW);
  CHECK(nebula_mem_pressure_unregister(h) == 0);

  /* At the limit, a callback that empties a cache lets the allocation succeed. */
  uint64_t hc = nebula_mem_pressure_register(cache_cb, NULL);
  CHECK(hc != 0);
  for (g_cache_n = 0; g_cache_n < 40; g_cache_n++) {
    g_cache[g_cache_n] = malloc(2 * MIB);
    CHECK(g_cache[g_cache_n] != NULL);
    memset(g_cache[g_cache_n], 7, 2 * MIB);
  }
  void* want = malloc(40 * MIB); /* 80 + 40 > 100: needs the cache */
  CHECK(want != NULL);
  CHECK(g_cache_drops == 1);
  memset(want, 9, 40 * MIB);
  free(want);
  CHECK(nebula_mem_pressure_unregister(hc) == 0);
  CHECK(g_event_count == 4); /* the unregistered recorder saw nothing more */

  /* Register/unregister from 4 threads while this thread crosses levels up and down. */
  pthread_t t[4];
  for (int i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, registrar, NULL) == 0);
  for (int round = 0; round < 20; round++) {
    n = 0;
    for (int i = 0; i < 90; i++) {
      blocks[n] = malloc(MIB);
      if (!blocks[n]) break;
      memset(blocks[n], 1, MIB);
      n++;
    }
    for (int i = 0; i < n; i++) free(blocks[i]);
    nebula_mem_collect();
  }
  atomic_store(&g_stop, 1);
  for (int i = 0; i < 4; i++) CHECK(pthread_join(t[i], NULL) == 0);

  nebula_mem_stats st;
  nebula_mem_get_stats(&st);
  CHECK(st.level_crossings[1] - st0.level_crossings[1] >= 21);
  CHECK(nebula_mem_set_budget(0) == 0);
  printf("pressure_test: ok (%d events in order, cache freed at critical, %ld callbacks under churn)\n", g_event_count,
         (long)atomic_load(&g_churn_calls));
  return 0;
}
