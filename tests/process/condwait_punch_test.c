/* A thread that waits on a condition variable gives back the memory of the free blocks on its
 * sparse pages first, as a pool worker between jobs needs (nothing else would: only the owner
 * touches a page's free lists, and it is blocked). The main thread fills 16 MiB with 256-byte
 * blocks, frees all but one in 64 (every page keeps live blocks, so no span is free), and waits
 * in pthread_cond_wait while a thread that does not allocate watches RSS: it must fall by at
 * least 8 MiB within 2 s. Then the same with pthread_cond_timedwait, 1.1 s later: past the
 * purge delay that rate-limits the work, and past the four purge delays within which memory
 * that a punch gave back and that came back would make the next punch wait longer. The
 * blocks kept must survive, and the next 16 MiB of blocks (carved again from the holes) must
 * hold what is written to them. A third round 300 ms later carves the holes again at once: the
 * punch before it was wasted, so this wait skips its punch and RSS stays up. */
#include "../check.h"

#include <pthread.h>
#include <time.h>

enum { BLOCK = 256, NBLOCKS = (16 << 20) / BLOCK, KEEP_EVERY = 64 };
static void *blocks[NBLOCKS];
static size_t rss_full;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int done;
static int round_no;
static int expect_drop;

static void *watcher(void *arg) {
  (void)arg;
  size_t rss = nt_wait_rss_drop(rss_full, NT_MIB(8), expect_drop ? 2.0 : 0.5);  /* only main's wait */
  if (!NT_AGAINST_GLIBC && expect_drop)  /* glibc keeps the free chunks resident */
    CHECKF(rss + NT_MIB(8) <= rss_full,
           "round %d: RSS %zu MiB with the main thread waiting on a condition variable, %zu MiB "
           "before (bound: 8 MiB less within 2 s)", round_no, rss >> 20, rss_full >> 20);
  if (!NT_AGAINST_GLIBC && !expect_drop)
    CHECKF(rss + NT_MIB(4) > rss_full,
           "round %d: RSS %zu MiB with the main thread waiting right after carving back what the "
           "last punch gave, %zu MiB before: the wasted punch was repeated", round_no, rss >> 20,
           rss_full >> 20);
  pthread_mutex_lock(&mu);
  done = 1;
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
  return NULL;
}

static void fill_and_free_most(uint64_t id) {
  for (int i = 0; i < NBLOCKS; i++) {
    if (i % KEEP_EVERY == 0 && blocks[i] != NULL) continue;
    blocks[i] = malloc(nt_opaque_size(BLOCK));
    CHECK(blocks[i] != NULL);
    nt_fill(blocks[i], BLOCK, (uint64_t)i + id);
  }
  for (int i = 0; i < NBLOCKS; i++) {
    if (i % KEEP_EVERY == 0) continue;
    CHECK(nt_verify(blocks[i], BLOCK, (uint64_t)i + id) == NT_OK);
    free(blocks[i]);
    blocks[i] = NULL;
  }
  rss_full = nt_rss_bytes();
  CHECKF(rss_full > NT_MIB(16), "RSS only %zu MiB after filling 16 MiB", rss_full >> 20);
}

static void wait_for_watcher(int timed) {
  pthread_t t;
  done = 0;
  pthread_mutex_lock(&mu);
  CHECK(pthread_create(&t, NULL, watcher, NULL) == 0);
  while (!done) {
    if (timed) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += 5;
      pthread_cond_timedwait(&cv, &mu, &until);
    } else {
      pthread_cond_wait(&cv, &mu);
    }
  }
  pthread_mutex_unlock(&mu);
  CHECK(pthread_join(t, NULL) == 0);
}

int main(void) {
  CHECK_PRELOAD();
  round_no = 1;
  expect_drop = 1;
  fill_and_free_most(0);
  wait_for_watcher(0);
  struct timespec pause = {1, 100 * 1000 * 1000};  /* past four purge delays (250 ms each) */
  nanosleep(&pause, NULL);
  round_no = 2;
  fill_and_free_most(1000000);  /* the holes are carved again and written */
  wait_for_watcher(1);
  struct timespec short_pause = {0, 300 * 1000 * 1000};  /* past the purge delay only */
  nanosleep(&short_pause, NULL);
  round_no = 3;
  expect_drop = 0;
  fill_and_free_most(2000000);
  wait_for_watcher(0);
  for (int i = 0; i < NBLOCKS; i += KEEP_EVERY) CHECK(nt_verify(blocks[i], BLOCK, (uint64_t)i) == NT_OK);
  for (int i = 0; i < NBLOCKS; i += KEEP_EVERY) free(blocks[i]);
  puts("condwait_punch_test: ok");
  return 0;
}
