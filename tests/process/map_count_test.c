/* Our huge-page requests must not use up the process's mappings. Each 2 MiB whose huge-page
 * flag (madvise MADV_HUGEPAGE) differs from its neighbour's is a mapping (VMA) of its own, and
 * the kernel allows vm.max_map_count of them in all (65,530 by default), the program's own
 * included: 33,000 live blocks of 4-8 MiB, each asking for huge pages inside, used them all up,
 * and then pthread_create failed (a thread's stack is two mappings), where glibc's malloc left
 * the program 110. The library asks for no more huge pages once its requests made a quarter of
 * the limit's worth of flag changes.
 *
 * 12,000 live blocks of 4-8 MiB (a byte written at each end: a few KiB resident each), which
 * uncapped made about 24,000 mappings; the count must stay under the cap plus the program's
 * own, and a thread must still start. */
#include "../check.h"

#include <pthread.h>
#include <stdint.h>

enum { BLOCKS = 12000 };
static char *block[BLOCKS];

static long count_lines(const char *path) {
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  long n = 0;
  int c;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

static long read_long(const char *path, long fallback) {
  FILE *f = fopen(path, "r");
  long v = fallback;
  if (f != NULL) {
    if (fscanf(f, "%ld", &v) != 1) v = fallback;
    fclose(f);
  }
  return v;
}

static void *nothing(void *arg) { return arg; }

int main(void) {
  CHECK_PRELOAD();
  const long limit = read_long("/proc/sys/vm/max_map_count", 65530);
  const long maps0 = count_lines("/proc/self/maps");
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < BLOCKS; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    size_t n = ((size_t)4 << 20) + (size_t)(x >> 20) % ((size_t)4 << 20);
    block[i] = malloc(n);
    CHECKF(block[i] != NULL, "malloc(%zu) failed at block %d", n, i);
    block[i][0] = 1;
    block[i][n - 1] = 1;
  }
  const long maps = count_lines("/proc/self/maps");
  CHECKF(maps - maps0 <= limit / 4 + 64, "%ld mappings for %d blocks (cap %ld)", maps - maps0,
         BLOCKS, limit / 4);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, nothing, NULL) == 0);
  CHECK(pthread_join(t, NULL) == 0);
  for (int i = 0; i < BLOCKS; ++i) free(block[i]);
  printf("map_count_test: %ld mappings for %d blocks of 4-8 MiB (cap %ld)\n", maps - maps0, BLOCKS,
         limit / 4);
  return 0;
}
