/* Helper for options_test.sh: allocates a little, checks the preload is active, prints one
 * line to stdout. Everything else the process writes comes from the library. */
#include "../check.h"

int main(void) {
  CHECK_PRELOAD();
  void *blocks[100];
  for (int i = 0; i < 100; i++) {
    blocks[i] = malloc(nt_opaque_size((size_t)(i + 1) * 100));
    CHECK(blocks[i] != NULL);
    memset(blocks[i], i, (size_t)(i + 1) * 100);
  }
  for (int i = 0; i < 100; i++) free(blocks[i]);
  fputs("probe-ok\n", stdout);
  return 0;
}
