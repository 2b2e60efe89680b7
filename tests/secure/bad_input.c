/* bad_input CASE: one bad input per run, for bad_input_test.sh, which checks how the process
 * ends (SIGABRT and the one-line message) in the default and in the secure mode.
 *   double-owner     free twice from the allocating thread
 *   double-remote    freed by the owner, then again by another thread
 *   double-large     free a 300 KiB block twice
 *   double-huge      free a 5 MiB block twice
 *   interior         free of a pointer 16 bytes into a 64-byte block
 *   stack, global    free of a stack / global address
 *   realloc-freed    realloc of a freed block
 *   sized-wrong      free_sized with a size far from the block's
 *   ok               no bad input: exits 0 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void free_sized(void* p, size_t n) __attribute__((weak));  /* not in glibc 2.36: ours, preloaded */

static int g_global = 1;
static void* g_ptr;
static void* second_free(void* arg) {
  (void)arg;
  free(g_ptr);
  return NULL;
}

int main(int argc, char** argv) {
  const char* c = argc > 1 ? argv[1] : "ok";
  void* keep = malloc(64);  /* keeps pages alive */
  void* p = malloc(64);
  memset(p, 1, 64);
  if (!strcmp(c, "double-owner")) { free(p); free(p); }
  else if (!strcmp(c, "double-remote")) {
    free(p);
    g_ptr = p;
    pthread_t t;
    pthread_create(&t, NULL, second_free, NULL);
    pthread_join(t, NULL);
  }
  else if (!strcmp(c, "double-large")) { void* q = malloc(300 << 10); free(q); free(q); }
  else if (!strcmp(c, "double-huge")) { void* q = malloc(5 << 20); free(q); free(q); }
  else if (!strcmp(c, "interior")) free((char*)p + 16);
  else if (!strcmp(c, "stack")) { int x; void* volatile q = &x; free(q); }
  else if (!strcmp(c, "global")) { void* volatile q = &g_global; free(q); }
  else if (!strcmp(c, "realloc-freed")) { free(p); p = realloc(p, 100); }
  else if (!strcmp(c, "sized-wrong")) { void* q = malloc(1000); free_sized(q, 24); }
  else if (strcmp(c, "ok")) return 2;
  printf("%s: survived %p\n", c, p);
  free(keep);
  return 0;
}
