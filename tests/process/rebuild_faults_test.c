/* A loop that builds a set of blocks and frees all of it, round after round (glibc's
 * bench-malloc-simple, a server's per-request buffers), must reuse its memory, not give it back
 * to the OS and fault it in again at every round. Each round here lets go of the whole heap, so
 * the early purge pass of a heap that let go of most of its memory (docs/performance.md, log,
 * stop 40) may run, but at most once per maintenance interval (a quarter of the purge delay):
 * its first version purged at every round and made `glibc-simple` take 112,555 page faults
 * instead of 2,920.
 *
 * The bound: the set's pages faulted in a few times, plus once per maintenance interval of the
 * loop's run (the pass purges what is beyond the heap's float). Page faults are counted by the
 * kernel (getrusage), not timed; the run's length only sets how many passes may fall in it.
 * Runs with the default options (the suite's environment); NEBULA_MEM_PURGE_DELAY is read if
 * set. glibc's malloc does not pass it: it trims its heap's top at every round (1,574,002 page
 * faults, tests/glibc_baseline.sh), so against glibc the test prints its count and asserts only
 * the blocks' contents. */
#include "../check.h"

#include <stdlib.h>
#include <sys/resource.h>

enum { N = 1600, SIZE = 4096, ROUNDS = 1000 }; /* 6.25 MiB a round, beyond the 2 MiB float */
static void *blocks[N];

static long minor_faults(void) {
  struct rusage ru;
  CHECK(getrusage(RUSAGE_SELF, &ru) == 0);
  return ru.ru_minflt;
}

static void one_round(unsigned r) {
  for (unsigned i = 0; i < N; ++i) {
    blocks[i] = malloc(nt_opaque_size(SIZE));
    CHECKF(blocks[i] != NULL, "round %u: malloc(%d) #%u failed", r, SIZE, i);
    *(uint64_t *)blocks[i] = (uint64_t)r * N + i;
  }
  for (unsigned i = 0; i < N; ++i) {
    CHECKF(*(uint64_t *)blocks[i] == (uint64_t)r * N + i, "round %u: block %u changed", r, i);
    free(blocks[i]);
  }
}

int main(void) {
  CHECK_PRELOAD();
  double delay_ms = 250; /* the default purge delay */
  const char *env = getenv("NEBULA_MEM_PURGE_DELAY");
  if (env != NULL && *env != 0) delay_ms = atof(env);
  const double interval_ms = delay_ms / 4 > 1 ? delay_ms / 4 : 1;
  for (unsigned r = 0; r < 3; ++r) one_round(r); /* the set's pages are made once */
  const long f0 = minor_faults();
  const double t0 = nt_now_s();
  for (unsigned r = 3; r < 3 + ROUNDS; ++r) one_round(r);
  const double ms = (nt_now_s() - t0) * 1000;
  const long faults = minor_faults() - f0;
#ifdef NEBULA_TEST_AGAINST_GLIBC
  printf("rebuild_faults_test: glibc: %ld page faults in %d rounds (%.0f ms), not asserted\n", faults, ROUNDS, ms);
  return 0;
#endif
  const double passes = ms / interval_ms + 1;
  const long allowed = (long)(N * (4 + passes));
  CHECKF(faults <= allowed,
         "%ld page faults in %d rounds of %d blocks of %d bytes built and freed (%.0f ms, %.1f "
         "maintenance intervals): at most %ld expected; the memory freed at each round went back "
         "to the OS and was faulted in again",
         faults, ROUNDS, N, SIZE, ms, passes, allowed);
  printf("rebuild_faults_test: %ld page faults in %d rounds (%.0f ms), at most %ld allowed\n", faults,
         ROUNDS, ms, allowed);
  return 0;
}
