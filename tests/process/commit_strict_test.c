/* Strict commit accounting (NEBULA_MEM_COMMIT=strict, which the kernel's vm.overcommit_memory = 2
 * turns on by itself; docs/design.md, "Strict commit"). Where the kernel charges every writable
 * private mapping in full, a 1 GiB arena mapped writable took 1 GiB of the system's commit limit
 * per process. Run with the option set (tests/meson.build), this checks in /proc/self/maps:
 *
 *   - the arena is mapped inaccessible ("---p") but for the chunks in use, which are "rw-p": at
 *     most a few MiB of the arena's GiB writable after a few thousand small blocks;
 *   - a huge block of 64 MiB makes its chunks writable, and once freed and trimmed
 *     (malloc_trim gives back the free memory at once) they are inaccessible again;
 *   - the segment map (the biggest anonymous mapping right after the library's own) is
 *     read-only, not writable: 32 MiB no longer charged.
 *
 * Fails without the option's code: the arena is one "rw-p" mapping of 1 GiB. */
#include "../check.h"

#include <malloc.h>

enum { CAP = 8192 };
static struct nt_mapping maps[CAP];

/* Bytes with permission perms in the anonymous mappings that touch [lo, hi). */
static size_t bytes_with(int n, uintptr_t lo, uintptr_t hi, const char *perms) {
  size_t sum = 0;
  for (int i = 0; i < n; ++i) {
    if (maps[i].hi <= lo || maps[i].lo >= hi || maps[i].path[0] != 0 || strcmp(maps[i].perms, perms) != 0) continue;
    uintptr_t a = maps[i].lo > lo ? maps[i].lo : lo, b = maps[i].hi < hi ? maps[i].hi : hi;
    sum += b - a;
  }
  return sum;
}

int main(void) {
  CHECK_PRELOAD();
  const char *opt = getenv("NEBULA_MEM_COMMIT");
  CHECKF(opt != NULL && strcmp(opt, "strict") == 0, "run with NEBULA_MEM_COMMIT=strict (tests/meson.build)");
  enum { SMALL = 4000 };
  static void *small[SMALL];
  for (int i = 0; i < SMALL; ++i) {
    small[i] = malloc(16 + (size_t)(i % 32) * 16);
    CHECK(small[i] != NULL);
    memset(small[i], 5, 16);
  }
  /* The arena (1 GiB, aligned to 4 MiB) lies within the GiB on either side of the block. */
  const uintptr_t mib = (uintptr_t)1 << 20;
  int n = nt_read_mappings(maps, CAP);
  int k = nt_mapping_of(maps, n, small[0]);
  CHECKF(k >= 0, "no mapping holds a small block");
  CHECKF(strcmp(maps[k].perms, "rw-p") == 0, "the small block's chunk is %s, not rw-p", maps[k].perms);
  uintptr_t lo = (uintptr_t)small[0] - 1024 * mib, hi = (uintptr_t)small[0] + 1024 * mib;
  size_t none = bytes_with(n, lo, hi, "---p"), rw = bytes_with(n, lo, hi, "rw-p");
  CHECKF(none >= 900 * mib, "only %zu MiB inaccessible around the blocks (%zu MiB writable): arenas mapped writable",
         none / mib, rw / mib);

  const size_t huge_size = 64 * mib;
  char *huge = malloc(huge_size);
  CHECK(huge != NULL);
  memset(huge, 6, huge_size);
  n = nt_read_mappings(maps, CAP);
  size_t huge_rw = bytes_with(n, (uintptr_t)huge, (uintptr_t)huge + huge_size, "rw-p");
  CHECKF(huge_rw == huge_size, "the 64 MiB block has %zu MiB writable", huge_rw / mib);
  free(huge);
  malloc_trim(0);
  n = nt_read_mappings(maps, CAP);
  /* Its chunks (4 MiB each, the block's first 4 MiB hold its header) are inaccessible again. */
  size_t after = bytes_with(n, (uintptr_t)huge + 4 * mib, (uintptr_t)huge + huge_size - 4 * mib, "---p");
  CHECKF(after == huge_size - 8 * mib, "after free and trim, %zu of the block's inner %zu MiB are inaccessible",
         after / mib, (huge_size - 8 * mib) / mib);

  /* The segment map (the library's sparse .bss). */
  const int segmap = nt_segment_map(maps, n);
  CHECKF(segmap >= 0 && maps[segmap].hi - maps[segmap].lo >= 16 * mib, "no big anonymous mapping after the library");
  CHECKF(strcmp(maps[segmap].perms, "r--p") == 0, "the segment map's %zu MiB are %s, not read-only",
         (size_t)((maps[segmap].hi - maps[segmap].lo) / mib), maps[segmap].perms);

  for (int i = 0; i < SMALL; ++i) free(small[i]);
  printf("commit_strict_test: %zu MiB inaccessible and %zu MiB writable around the blocks; segment map %zu MiB read-only\n",
         none / mib, rw / mib, (size_t)((maps[segmap].hi - maps[segmap].lo) / mib));
  return 0;
}
