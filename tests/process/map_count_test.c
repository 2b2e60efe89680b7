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
 * own, and a thread must still start.
 *
 * Secure mode (NEBULA_MEM_SECURE=1; meson's map_count_secure_test) puts an inaccessible guard
 * slice after each block, two more mappings each, which nothing counted: the 12,000 blocks made
 * 40,383 mappings, and about 19,000 would have left the program none. The guards and the flags
 * together now stay under half of vm.max_map_count: the 12,000 blocks must fit under that, and
 * then blocks are allocated until one fails, which must be NULL with ENOMEM (no block without its
 * guard) while the program can still start a thread and map memory, and a block freed must let
 * the next one through. */
#include "../check.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>

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

static void program_still_works(void) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, nothing, NULL) == 0);
  CHECK(pthread_join(t, NULL) == 0);
  void *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(m != MAP_FAILED);
  CHECK(munmap(m, 1 << 20) == 0);
}

/* Secure mode past the 12,000: blocks of 2 MiB and a bit (a chunk each) until the cap refuses
 * one, which must happen close to half of the limit, not before. Where the limit is raised far
 * (1,048,576 on some distributions) the cap lies beyond what a test should map (a 4 MiB chunk
 * per block): there 20,000 more blocks must all come, under the cap. */
static void secure_to_the_cap(long limit, long maps0) {
  const int reach = limit <= 262144;
  const long most = reach ? limit / 4 + 4000 : 20000;  /* the cap: fewer than limit / 4 guards */
  char **more = malloc((size_t)most * sizeof *more);
  CHECK(more != NULL);
  const size_t n = ((size_t)2 << 20) + 4096;
  long got = 0;
  errno = 0;
  while (got < most && (more[got] = malloc(n)) != NULL) {
    more[got][0] = 1;
    ++got;
  }
  const long maps = count_lines("/proc/self/maps");
  CHECKF(maps - maps0 <= limit / 2 + 64, "%ld mappings at the cap (limit %ld)", maps - maps0, limit);
  if (!reach) {
    CHECKF(got == most, "block %ld refused (errno %d) under the cap (limit %ld)", BLOCKS + got, errno, limit);
    program_still_works();
    for (long i = 0; i < got; ++i) free(more[i]);
    free(more);
    printf("map_count_test: secure mode, %ld blocks at %ld mappings, under the cap (limit %ld)\n",
           BLOCKS + got, maps - maps0, limit);
    return;
  }
  CHECKF(got > 0 && got < most, "%ld more blocks (limit %ld)", got, limit);
  CHECKF(errno == ENOMEM, "errno %d after block %ld", errno, BLOCKS + got);
  CHECKF(maps - maps0 >= limit / 2 - 1000, "refused at %ld mappings (limit %ld)", maps - maps0, limit);
  program_still_works();
  free(more[got - 1]);
  more[got - 1] = malloc(n);
  CHECKF(more[got - 1] != NULL, "no block after one was freed (errno %d)", errno);
  for (long i = 0; i < got; ++i) free(more[i]);
  free(more);
  printf("map_count_test: secure mode refused block %ld with ENOMEM at %ld mappings\n", BLOCKS + got,
         maps - maps0);
}

int main(void) {
  CHECK_PRELOAD();
  const char *secure_env = getenv("NEBULA_MEM_SECURE");
  const int secure = secure_env != NULL && atoi(secure_env) != 0;
  const long limit = read_long("/proc/sys/vm/max_map_count", 65530);
  const long cap = secure ? limit / 2 : limit / 4;
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
  CHECKF(maps - maps0 <= cap + 64, "%ld mappings for %d blocks (cap %ld)", maps - maps0, BLOCKS, cap);
  program_still_works();
  printf("map_count_test: %ld mappings for %d blocks of 4-8 MiB (cap %ld)\n", maps - maps0, BLOCKS, cap);
  if (secure) secure_to_the_cap(limit, maps0);
  for (int i = 0; i < BLOCKS; ++i) free(block[i]);
  return 0;
}
