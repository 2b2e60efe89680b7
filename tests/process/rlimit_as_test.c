/* Under an address-space limit (RLIMIT_AS, `ulimit -v`), which counts reserved space, the
 * library must still run a program that glibc's malloc runs: its arenas shrink to fit (1 GiB,
 * then 64 MiB, 16 MiB, and the chunks asked for; stop 50). With only 1 GiB and 64 MiB tried,
 * python3 under `ulimit -v 100000` failed at start where glibc's malloc ran it.
 *
 * The test runs itself again with the limit set to its own address space without our first
 * arena plus 56 MiB: room for arenas of 16 MiB, not for one of 64 MiB with its 4 MiB of
 * alignment slack beside them. There it allocates 8 MiB of small blocks and a block of 12 MiB,
 * writes them, and frees them. */
#include "../check.h"

#include <sys/resource.h>

static size_t vm_size_bytes(void) {
  FILE *f = fopen("/proc/self/status", "r");
  CHECK(f != NULL);
  char line[256];
  size_t kib = 0;
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, "VmSize:", 7) == 0) kib = (size_t)atol(line + 7);
  fclose(f);
  return kib << 10;
}

/* The anonymous mappings of 512 MiB or more: our arenas (1 GiB each). */
static struct nt_mapping maps[4096];
static size_t big_anonymous_bytes(void) {
  const int n = nt_read_mappings(maps, 4096);
  size_t sum = 0;
  for (int i = 0; i < n; ++i)
    if (maps[i].path[0] == 0 && maps[i].hi - maps[i].lo >= (512ul << 20)) sum += maps[i].hi - maps[i].lo;
  return sum;
}

int main(int argc, char **argv) {
  (void)argc;
  CHECK_PRELOAD();
  if (getenv("RLIMIT_AS_TEST_CHILD") == NULL) {
    const size_t limit = vm_size_bytes() - big_anonymous_bytes() + NT_MIB(56);
    struct rlimit rl = {limit, limit};
    CHECK(setrlimit(RLIMIT_AS, &rl) == 0);
    CHECK(setenv("RLIMIT_AS_TEST_CHILD", "1", 1) == 0);
    printf("rlimit_as_test: address space limited to %zu MiB\n", limit >> 20);
    fflush(stdout);
    execv("/proc/self/exe", argv);
    CHECKF(0, "execv /proc/self/exe: %s", strerror(errno));
  }
  enum { SMALL = 8192 };
  static char *small[SMALL];
  for (int i = 0; i < SMALL; ++i) {
    small[i] = malloc(1024);
    CHECKF(small[i] != NULL, "small block %d of 1 KiB: NULL (errno %d) under the address-space limit", i, errno);
    memset(small[i], i & 0xff, 1024);
  }
  const size_t big_size = NT_MIB(12);
  char *big = malloc(big_size);
  CHECKF(big != NULL, "a block of 12 MiB: NULL (errno %d) under the address-space limit", errno);
  memset(big, 0x5a, big_size);
  for (int i = 0; i < SMALL; ++i) {
    CHECK(small[i][0] == (char)(i & 0xff) && small[i][1023] == (char)(i & 0xff));
    free(small[i]);
  }
  CHECK(big[0] == 0x5a && big[big_size - 1] == 0x5a);
  free(big);
  printf("rlimit_as_test: 8 MiB of small blocks and a 12 MiB block under the limit (VmSize now %zu MiB)\n",
         vm_size_bytes() >> 20);
  return 0;
}
