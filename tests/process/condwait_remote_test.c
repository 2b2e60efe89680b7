/* A thread that waits on a condition variable after other threads freed the blocks it had
 * allocated gives that memory back first (stop 42). Those frees wait on its pages' remote lists
 * and, for full pages, on its heap's delayed list, until it allocates from the pages again, which
 * a producer that blocks between batches does not do; nor can another thread touch its pages.
 * The main thread fills 16 MiB with 256-byte blocks (every page full), a thread that never
 * allocates frees them all, and the main thread waits in pthread_cond_timedwait while a second
 * such thread watches RSS: it must fall by at least 8 MiB within 2 s. (It waits for the freeing
 * thread with nanosleep, not pthread_join, whose own hook hands the heap's segments over.) Then
 * the main thread fills 16 MiB again, carved from the holes, and checks what it wrote.
 * tests/meson.build runs it in secure mode too (condwait_remote_secure_test), where the pages
 * are freed instead of punched. */
#include "../check.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

enum { BLOCK = 256, NBLOCKS = (16 << 20) / BLOCK };
static void *blocks[NBLOCKS];
static size_t rss_full;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;  /* never signalled: the waits time out */
static atomic_int freed, watched;

static void *consumer(void *arg) {
  (void)arg;
  for (int i = 0; i < NBLOCKS; i++) {
    free(blocks[i]);
    blocks[i] = NULL;
  }
  atomic_store(&freed, 1);
  return NULL;
}

static void *watcher(void *arg) {
  (void)arg;
  size_t rss = nt_wait_rss_drop(rss_full, NT_MIB(8), 2.0);
  if (!NT_AGAINST_GLIBC)  /* glibc keeps the free chunks resident */
    CHECKF(rss + NT_MIB(8) <= rss_full,
           "RSS %zu MiB with the main thread waiting on a condition variable after another thread "
           "freed its 16 MiB of blocks, %zu MiB before (bound: 8 MiB less within 2 s)",
           rss >> 20, rss_full >> 20);
  atomic_store(&watched, 1);
  return NULL;
}

static void fill(uint64_t id) {
  for (int i = 0; i < NBLOCKS; i++) {
    blocks[i] = malloc(nt_opaque_size(BLOCK));
    CHECK(blocks[i] != NULL);
    nt_fill(blocks[i], BLOCK, (uint64_t)i + id);
  }
  for (int i = 0; i < NBLOCKS; i++) CHECK(nt_verify(blocks[i], BLOCK, (uint64_t)i + id) == NT_OK);
}

int main(void) {
  CHECK_PRELOAD();
  fill(0);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, consumer, NULL) == 0);
  CHECK(pthread_detach(t) == 0);
  struct timespec tick = {0, 10 * 1000 * 1000};
  while (!atomic_load(&freed)) nanosleep(&tick, NULL);
  rss_full = nt_rss_bytes();
  CHECKF(rss_full > NT_MIB(16), "RSS only %zu MiB after filling 16 MiB", rss_full >> 20);
  CHECK(pthread_create(&t, NULL, watcher, NULL) == 0);
  pthread_mutex_lock(&mu);
  while (!atomic_load(&watched)) {  /* waits of 50 ms: the first gives the memory back */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 50 * 1000 * 1000;
    if (until.tv_nsec >= 1000 * 1000 * 1000) {
      until.tv_sec++;
      until.tv_nsec -= 1000 * 1000 * 1000;
    }
    pthread_cond_timedwait(&cv, &mu, &until);
  }
  pthread_mutex_unlock(&mu);
  CHECK(pthread_join(t, NULL) == 0);
  fill(1000000);
  for (int i = 0; i < NBLOCKS; i++) free(blocks[i]);
  puts("condwait_remote_test: ok");
  return 0;
}
