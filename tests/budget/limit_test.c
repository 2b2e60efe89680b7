/* Under NEBULA_MEM_BUDGET=64M (set by meson): allocate until the allocator says no.
 * Asserts: the failure is NULL with errno ENOMEM at every tier (small, medium, large, huge);
 * RSS never went past the budget plus the documented slack; the allocator's committed bytes
 * never exceeded the budget; after freeing half, allocations of the same size succeed again;
 * the stats report the budget and the failures. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "budget_check.h"
#include "nebula/mem.h"

#define BUDGET (64ull << 20)
#define SLACK_KIB (8 * 1024) /* program, libc and allocator metadata outside the budget */

static void* blocks[1 << 20];

static size_t fill_until_null(size_t size, long* max_rss) {
  size_t n = 0;
  for (;;) {
    errno = 0;
    void* p = malloc(size);
    if (p == NULL) {
      CHECKF(errno == ENOMEM, "errno %d after a failed malloc(%zu)", errno, size);
      break;
    }
    memset(p, 0x5a, size);
    blocks[n++] = p;
    CHECK(n < sizeof blocks / sizeof blocks[0]);
    long r = rss_kib();
    if (r > *max_rss) *max_rss = r;
  }
  return n;
}

int main(void) {
  CHECK(nebula_mem_is_active());
  CHECKF(nebula_mem_get_budget() == BUDGET, "budget %llu", (unsigned long long)nebula_mem_get_budget());
  long max_rss = 0;
  const size_t sizes[] = {64 << 10, 100, 300 << 10, 10 << 20};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t size = sizes[k];
    size_t n = fill_until_null(size, &max_rss);
    CHECKF(n * size >= (BUDGET / 4), "only %zu blocks of %zu bytes fit in a 64 MiB budget", n, size);
    /* calloc, realloc, aligned allocation fail cleanly too */
    errno = 0;
    CHECK(calloc(1, size) == NULL && errno == ENOMEM);
    void* al = NULL;
    CHECK(posix_memalign(&al, 4096, size) == ENOMEM);
    /* free half; the same size fits again */
    size_t freed = 0;
    for (size_t i = 0; i < n; i += 2, freed++) free(blocks[i]);
    size_t again = 0;
    for (size_t i = 0; i < n; i += 2) {
      void* p = malloc(size);
      if (p == NULL) break;
      memset(p, 1, size);
      blocks[i] = p;
      again++;
    }
    CHECKF(again == freed, "after freeing %zu blocks of %zu bytes only %zu could be allocated again", freed, size, again);
    for (size_t i = 0; i < n; i++) free(blocks[i]);
    nebula_mem_collect();
    nebula_mem_stats st;
    nebula_mem_get_stats(&st);
    CHECKF(st.committed_peak <= BUDGET, "committed peak %llu over the budget", (unsigned long long)st.committed_peak);
    CHECKF(st.committed_bytes < BUDGET / 4, "after freeing everything %llu bytes stay committed",
           (unsigned long long)st.committed_bytes);
  }
  CHECKF(max_rss <= (long)(BUDGET >> 10) + SLACK_KIB, "RSS reached %ld KiB under a 64 MiB budget", max_rss);
  nebula_mem_stats st;
  nebula_mem_get_stats(&st);
  CHECK(st.budget == BUDGET);
  CHECK(st.budget_failures >= 4);
  CHECK(st.level_crossings[1] >= 1 && st.level_crossings[2] >= 1 && st.level_crossings[3] >= 1);
  printf("limit_test: ok (4 tiers failed with ENOMEM at the budget, max RSS %ld KiB, peak committed %llu KiB)\n", max_rss,
         (unsigned long long)(st.committed_peak >> 10));
  return 0;
}
