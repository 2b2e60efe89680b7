/* tests/budget/budget_check.h: assertions for the budget tests (print file:line and exit 1). */
#ifndef BUDGET_CHECK_H
#define BUDGET_CHECK_H
#include <stdio.h>
#include <stdlib.h>
#define CHECK(c)                                                                  \
  do {                                                                            \
    if (!(c)) {                                                                   \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);       \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)
#define CHECKF(c, ...)                                                            \
  do {                                                                            \
    if (!(c)) {                                                                   \
      fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #c);       \
      fprintf(stderr, __VA_ARGS__);                                               \
      fputc('\n', stderr);                                                        \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)

static inline long rss_kib(void) {
  FILE* f = fopen("/proc/self/statm", "r");
  long size = 0, res = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
    fclose(f);
  }
  return res * 4;
}
#endif
