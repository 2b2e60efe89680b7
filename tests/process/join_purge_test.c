/* A thread that waits in pthread_join gives its memory up first. The main thread fills 16 MiB
 * with 4 KiB blocks, frees all but one block in 64 (so its segments stay, holding about 15 MiB
 * of free resident pages) and starts a thread, which watches RSS while main waits in
 * pthread_join: it must fall by at least 10 MiB within 2 s (nothing else would return that
 * memory while main is blocked: the purge delay runs only when a thread calls the allocator,
 * and no other thread may purge main's segments). Then the same again 150 ms later: a thread
 * that joined less than a second ago does not purge (fork-join loops would fault their memory
 * back in after every join), so RSS stays up, but its segments are given up all the same, and
 * the second thread's own 15 MiB of blocks reuse main's free memory: RSS grows by less than
 * 6 MiB. The blocks main kept must survive both joins. */
#include "../check.h"

#include <pthread.h>
#include <time.h>

enum { NBLOCKS = 4096, BLOCK = 4096, KEEP_EVERY = 64 };
static void *blocks[NBLOCKS];
static size_t rss_full;

static void *watcher(void *arg) {
  (void)arg;
  size_t rss = nt_wait_rss_drop(rss_full, NT_MIB(10), 2.0);  /* only main's join can return it */
  if (NT_AGAINST_GLIBC) return NULL;  /* glibc keeps the holes below its heap top */
  CHECKF(rss + NT_MIB(10) <= rss_full,
         "RSS %zu MiB with the main thread waiting in pthread_join, %zu MiB before (bound: 10 MiB less "
         "within 2 s)", rss >> 20, rss_full >> 20);
  return NULL;
}

static void *watcher_reuse(void *arg) {
  (void)arg;
  struct timespec ts = {0, 100 * 1000 * 1000};
  nanosleep(&ts, NULL);
  size_t rss = nt_rss_bytes();
  CHECKF(rss + NT_MIB(4) > rss_full,
         "RSS %zu MiB while main waits in a second join soon after the first, %zu MiB before: the "
         "join purged again", rss >> 20, rss_full >> 20);
  enum { N = 3840 };  /* 15 MiB */
  static void *mine[N];
  for (int i = 0; i < N; i++) {
    mine[i] = malloc(nt_opaque_size(BLOCK));
    CHECK(mine[i] != NULL);
    nt_fill(mine[i], BLOCK, (uint64_t)i + 7);
  }
  size_t now = nt_rss_bytes();
  size_t grown = now > rss ? now - rss : 0;  /* RSS may also fall meanwhile (a purge elsewhere) */
  if (!NT_AGAINST_GLIBC)
    CHECKF(grown < NT_MIB(6), "15 MiB of new blocks grew RSS by %zu MiB while main, waiting in "
           "pthread_join, held 15 MiB of free memory (bound: 6 MiB)", grown >> 20);
  for (int i = 0; i < N; i++) {
    CHECK(nt_verify(mine[i], BLOCK, (uint64_t)i + 7) == NT_OK);
    free(mine[i]);
  }
  return NULL;
}

static void fill_and_free_most(void) {
  for (int i = 0; i < NBLOCKS; i++) {
    if (i % KEEP_EVERY == 0 && blocks[i] != NULL) continue;
    blocks[i] = malloc(nt_opaque_size(BLOCK));
    CHECK(blocks[i] != NULL);
    nt_fill(blocks[i], BLOCK, (uint64_t)i);
  }
  for (int i = 0; i < NBLOCKS; i++) {
    if (i % KEEP_EVERY == 0) continue;
    free(blocks[i]);
    blocks[i] = NULL;
  }
  rss_full = nt_rss_bytes();
  CHECKF(rss_full > NT_MIB(16), "RSS only %zu MiB after filling 16 MiB", rss_full >> 20);
}

int main(void) {
  CHECK_PRELOAD();
  pthread_t t;
  fill_and_free_most();
  CHECK(pthread_create(&t, NULL, watcher, NULL) == 0);
  CHECK(pthread_join(t, NULL) == 0);
  struct timespec pause = {0, 150 * 1000 * 1000};
  nanosleep(&pause, NULL);
  fill_and_free_most();
  CHECK(pthread_create(&t, NULL, watcher_reuse, NULL) == 0);
  CHECK(pthread_join(t, NULL) == 0);

  for (int i = 0; i < NBLOCKS; i += KEEP_EVERY) CHECK(nt_verify(blocks[i], BLOCK, (uint64_t)i) == NT_OK);
  void *more[256];
  for (int i = 0; i < 256; i++) {
    more[i] = malloc(nt_opaque_size(BLOCK));
    CHECK(more[i] != NULL);
    nt_fill(more[i], BLOCK, (uint64_t)i + 99);
  }
  for (int i = 0; i < 256; i++) {
    CHECK(nt_verify(more[i], BLOCK, (uint64_t)i + 99) == NT_OK);
    free(more[i]);
  }
  for (int i = 0; i < NBLOCKS; i += KEEP_EVERY) free(blocks[i]);
  puts("join_purge_test: ok");
  return 0;
}
