/* Memory goes back to the OS. Phase 1: allocate 1 GiB in 64 KiB blocks, write every byte,
 * free it all (in a shuffled order), then poll RSS every 50 ms without calling malloc_trim:
 * it must fall below 100 MiB within 2 s. Each poll does one small malloc/free, as a program
 * that keeps running would (an allocator may purge from its own thread or on later calls).
 * Phase 2: the same again, then malloc_trim(0): RSS must be below 100 MiB immediately.
 * RSS is read from /proc/self/statm with open/read (no stdio, no malloc in the measurement). */
#include "../check.h"

#include <malloc.h>
#include <time.h>

enum { BLOCK = 64 * 1024, NBLOCKS = 16384 }; /* 16384 x 64 KiB = 1 GiB */
static void *blocks[NBLOCKS];
static uint32_t order[NBLOCKS];

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void fill_gib(unsigned phase) {
  for (size_t i = 0; i < NBLOCKS; i++) {
    blocks[i] = malloc(nt_opaque_size(BLOCK));
    CHECKF(blocks[i] != NULL, "malloc(64 KiB) #%zu failed", i);
    memset(blocks[i], (int)(i + phase) | 1, BLOCK);
  }
  size_t rss = nt_rss_bytes();
  /* sanity: the memory really was resident, otherwise the decay assertion proves nothing */
  CHECKF(rss >= NT_MIB(900), "phase %u: RSS only %zu MiB with 1 GiB written", phase, rss >> 20);
  /* spot-check contents: no two blocks overlap */
  for (size_t i = 0; i < NBLOCKS; i += 61) {
    unsigned char *b = (unsigned char *)blocks[i];
    unsigned char v = (unsigned char)((int)(i + phase) | 1);
    CHECK(b[0] == v && b[BLOCK / 2] == v && b[BLOCK - 1] == v);
  }
}

static void free_shuffled(uint64_t *rng) {
  for (uint32_t i = 0; i < NBLOCKS; i++) order[i] = i;
  for (uint32_t i = NBLOCKS - 1; i > 0; i--) {
    uint32_t j = (uint32_t)(nt_rand(rng) % (i + 1));
    uint32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  for (uint32_t i = 0; i < NBLOCKS; i++) free(blocks[order[i]]);
}

int main(void) {
  CHECK_PRELOAD();
  uint64_t rng = 2024;
  size_t rss0 = nt_rss_bytes();
  CHECKF(rss0 < NT_MIB(50), "RSS at start already %zu MiB", rss0 >> 20);

  /* ---- phase 1: decay without malloc_trim ---- */
  fill_gib(1);
  free_shuffled(&rng);
  double t0 = nt_now_s();
  size_t rss = nt_rss_bytes();
  int polls = 0;
  while (rss >= NT_MIB(100)) {
    if (nt_now_s() - t0 > 2.0) break;
    sleep_ms(50);
    void *p = malloc(nt_opaque_size(64)); /* a running program keeps allocating a little */
    CHECK(p != NULL);
    free(p);
    rss = nt_rss_bytes();
    polls++;
  }
  double waited = nt_now_s() - t0;
  CHECKF(rss < NT_MIB(100),
         "RSS still %zu MiB %.2f s after freeing 1 GiB (bound: < 100 MiB within 2 s, no malloc_trim)",
         rss >> 20, waited);
  printf("rss_decay_test: phase 1: RSS %zu MiB after %d polls (%.2f s)\n", rss >> 20, polls, waited);

  /* ---- phase 2: malloc_trim(0) returns everything at once ---- */
  fill_gib(2);
  free_shuffled(&rng);
  malloc_trim(0);
  rss = nt_rss_bytes();
  CHECKF(rss < NT_MIB(100), "RSS %zu MiB right after free + malloc_trim(0) (bound 100 MiB)", rss >> 20);

  /* the memory is still usable after being returned */
  for (size_t i = 0; i < 1024; i++) {
    blocks[i] = malloc(nt_opaque_size(BLOCK));
    CHECK(blocks[i] != NULL);
    memset(blocks[i], 0x42, BLOCK);
  }
  for (size_t i = 0; i < 1024; i++) {
    CHECK(nt_find_not(blocks[i], BLOCK, 0x42) == NT_OK);
    free(blocks[i]);
  }

  printf("rss_decay_test: ok (1 GiB freed: RSS < 100 MiB within 2 s, and at once after malloc_trim)\n");
  return 0;
}
