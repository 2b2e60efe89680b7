/* bench/fastpath/pair.c: the malloc+free pair in steady state, for instruction counting.
 *
 * Keeps 1000 blocks of one size live and, each iteration, frees one chosen at random and
 * allocates its replacement: the pattern of a real program's small objects. (A loop that frees
 * its only block measures page retirement, not the fast path.)
 *
 *   pair SIZE ITERATIONS        run under `valgrind --tool=callgrind` twice, with ITERATIONS
 *                               0 and N: (Ir(N) - Ir(0)) / N is the cost of one iteration.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define LIVE 1000

int main(int argc, char** argv) {
  size_t size = argc > 1 ? strtoul(argv[1], NULL, 10) : 32;
  long iters = argc > 2 ? strtol(argv[2], NULL, 10) : 1000000;
  static void* live[LIVE];
  for (int i = 0; i < LIVE; i++) live[i] = malloc(size);
  uint64_t x = 88172645463325252ull;
  for (long it = 0; it < iters; it++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    unsigned i = (unsigned)(x % LIVE);
    free(live[i]);
    live[i] = malloc(size);
    *(volatile char*)live[i] = 1;
  }
  uintptr_t sum = 0;
  for (int i = 0; i < LIVE; i++) sum += (uintptr_t)live[i] & 1;
  for (int i = 0; i < LIVE; i++) free(live[i]);
  return (int)sum;
}
