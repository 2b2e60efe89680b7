/* Secure-mode properties (run with NEBULA_MEM_SECURE=1):
 *  - allocation order within a page is random: consecutive 64-byte blocks are not at
 *    consecutive addresses most of the time;
 *  - free lists are encoded: the first word of a freed block is not a plain pointer into the
 *    heap;
 *  - zero on free (NEBULA_MEM_ZERO_ON_FREE=1): a freed block reads zero past its two link words;
 *  - there is a guard after each segment: writing just past a huge block faults (checked in a
 *    child, which must die of SIGSEGV); also after realloc grew a huge block in place over its
 *    guard (the guard moves past the new end) and shrank it again; and on a segment made on a
 *    chunk whose last segment left its guard in place, while a huge block made on such chunks
 *    is written whole;
 *  - no block lies on that guard: large blocks at the highest alignments, whose aligned span
 *    would end on the segment's last slice, are written whole (a 2 MiB block aligned to 2 MiB
 *    took slices 32-63 of a new segment, the guard among them, and its last 64 KiB faulted);
 *  - a guard that the kernel refuses (past vm.max_map_count a guard's split of a mapping fails
 *    with ENOMEM; fault injection, which counts guards among the requests to the OS, stands
 *    in for it) leaves no block without one: huge blocks, their growth in place by realloc and
 *    new segments either fail (NULL and ENOMEM; realloc keeps the old block, still guarded) or
 *    come with their guard;
 *  - a class whose blocks are all freed and allocated again, over and over (temporaries),
 *    makes no pages: its page, found with fewer free blocks than 1/8 of it, was passed over for
 *    a new one, and the emptied page was freed (secure pages could not be spares): the loop
 *    below made 5,215 pages, each set up anew (live bits cleared, a shuffled carve). */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nebula/mem.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

/* Does a write at `at` fault? (In a child, which must die of SIGSEGV.) */
static int write_faults(char* at) {
  pid_t pid = fork();
  if (pid == 0) {
    *(volatile char*)at = 1;
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
}

#define SEGMENT_OF(p) ((uintptr_t)(p) & ~(uintptr_t)(4 * 1024 * 1024 - 1))

int main(void) {
  CHECK(nebula_mem_is_active());
  enum { N = 2000 };
  static char* b[N];
  int sequential = 0;
  for (int i = 0; i < N; i++) {
    b[i] = malloc(64);
    CHECK(b[i] != NULL);
    memset(b[i], 0xAB, 64);
    if (i > 0 && b[i] == b[i - 1] + 64) sequential++;
  }
  CHECK(sequential < N / 10);
  /* encoded links: a freed block's first word is not a pointer to another block of ours */
  free(b[10]);
  free(b[11]);
  uintptr_t w = *(uintptr_t*)b[11];
  CHECK(w != (uintptr_t)b[10]);
  uintptr_t seg = (uintptr_t)b[11] & ~(uintptr_t)(4 * 1024 * 1024 - 1);
  CHECK(!(w >= seg && w < seg + 4 * 1024 * 1024));
  /* zero on free */
  if (getenv("NEBULA_MEM_ZERO_ON_FREE")) {
    for (int k = 16; k < 64; k++) CHECK(b[11][k] == 0);
  }
  /* guard after a huge block */
  pid_t pid = fork();
  if (pid == 0) {
    char* h = malloc(5 << 20);
    size_t usable = nebula_usable_size(h);
    h[usable] = 1; /* just past the block: the guard */
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
  /* a huge block that realloc grows and then shrinks in place keeps a guard right after it:
     written whole after each step, and just past its end faults (a child per step) */
  for (int step = 0; step < 4; step++) {
    pid = fork();
    if (pid == 0) {
      char* h = malloc(5 << 20);
      memset(h, 1, nebula_usable_size(h));
      char* g = realloc(h, 9 << 20);
      if (g != h) _exit(3); /* grown in place: the chunks after a fresh block are free */
      if (step >= 2) {
        char* k = realloc(g, 6 << 20);
        if (k != g) _exit(4); /* shrunk in place */
      }
      size_t usable = nebula_usable_size(g);
      memset(g, 2, usable); /* the old guard is part of the block now */
      if (step % 2 == 1) g[usable] = 1; /* just past the block: the moved guard */
      _exit(0);
    }
    st = 0;
    waitpid(pid, &st, 0);
    if (step % 2 == 0) {
      if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fprintf(stderr, "secure_props: realloc step %d: status %d\n", step, st);
      CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    } else {
      CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
    }
  }
  /* segments freed whole leave their guard slice in place for the next segment on the chunk
     (the arena notes it); a huge block made on such chunks gets them accessible again */
  {
    enum { SEGS = 16 };
    void* al[SEGS];
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int round = 0; round < 2; round++) {
      for (int k = 0; k < SEGS; k++) {
        CHECK(posix_memalign(&al[k], 2u << 20, 100000) == 0); /* one segment each */
        memset(al[k], 7, 100000);
        uintptr_t seg = (uintptr_t)al[k] & ~(uintptr_t)(4 * 1024 * 1024 - 1);
        if (seg < lo) lo = seg;
        if (seg > hi) hi = seg;
      }
      if (round == 1) {
        /* a reused segment's guard faults */
        pid = fork();
        if (pid == 0) {
          uintptr_t seg = (uintptr_t)al[SEGS / 2] & ~(uintptr_t)(4 * 1024 * 1024 - 1);
          *(volatile char*)(seg + 4 * 1024 * 1024 - 64 * 1024) = 1;
          _exit(0);
        }
        st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
      }
      for (int k = 0; k < SEGS; k++) free(al[k]);
    }
    pid = fork();
    if (pid == 0) {
      char* h = malloc(24u << 20);
      if (h == NULL) _exit(2);
      if ((uintptr_t)h < lo || (uintptr_t)h >= hi + (4u << 20)) _exit(5); /* not on those chunks */
      memset(h, 3, 24u << 20);
      _exit(0);
    }
    st = 0;
    waitpid(pid, &st, 0);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) fprintf(stderr, "secure_props: huge block on freed segments: status %d\n", st);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  /* aligned large blocks written whole: none may reach the guard slice */
  static const size_t aligned_cases[][2] = {
      {2u << 20, 2u << 20}, {2u << 20, (2u << 20) - 100}, {1u << 20, 2u << 20}, {2u << 20, 1u << 20},
      {1u << 20, 1u << 20}, {512u << 10, 2u << 20}, {2u << 20, (31u << 16) + 1}};
  for (int round = 0; round < 4; round++) {
    void* keep[7];
    for (int k = 0; k < 7; k++) {
      size_t align = aligned_cases[k][0], n = aligned_cases[k][1];
      CHECK(posix_memalign(&keep[k], align, n) == 0);
      CHECK(((uintptr_t)keep[k] & (align - 1)) == 0);
      CHECK(nebula_usable_size(keep[k]) >= n);
      memset(keep[k], 0x5A, nebula_usable_size(keep[k]));
    }
    for (int k = 0; k < 7; k++) free(keep[k]);
  }
  /* a class that empties and refills in a loop makes no pages */
  {
    static void* tmp[8];
    nebula_mem_stats before, after;
    nebula_mem_get_stats(&before);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 100000; i++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      int n = 1 + (int)(x % 8);
      for (int k = 0; k < n; k++) {
        CHECK((tmp[k] = malloc(48)) != NULL);
        memset(tmp[k], 0x33, 48);
      }
      for (int k = 0; k < n; k++) free(tmp[k]);
    }
    nebula_mem_get_stats(&after);
    uint64_t made = after.pages_made[0] - before.pages_made[0];
    if (made > 2) fprintf(stderr, "secure_props: %llu small pages made by the loop\n", (unsigned long long)made);
    CHECK(made <= 2);
  }
  /* guards refused: every other request to the OS fails (random:2, a fixed seed) */
  {
    enum { H = 16, S = 40 };
    char* huge[H];
    void* segs[S];
    int refused = 0, made = 0;
    uint64_t injected = nebula_mem_faults_injected();
    CHECK(nebula_mem_fault_inject("random:2:7") == 0);
    for (int k = 0; k < H; k++) {
      errno = 0;
      huge[k] = malloc((5u + (unsigned)k % 3) << 20);
      CHECK(huge[k] != NULL || errno == ENOMEM);
      refused += huge[k] == NULL;
    }
    for (int k = 0; k < S; k++) {
      int r = posix_memalign(&segs[k], 2u << 20, 100000); /* one segment each */
      CHECK(r == 0 || r == ENOMEM);
      if (r != 0) segs[k] = NULL;
      refused += r != 0;
    }
    CHECK(nebula_mem_fault_inject("off") == 0);
    /* growth in place (the chunks after the newest block are free): the guard moves past the
       new end, or the block stays as it was, guarded, or moves to a guarded copy */
    for (int r = 0; r < 12; r++) {
      char* h = malloc(5u << 20);
      CHECK(h != NULL);
      size_t before = nebula_usable_size(h);
      char spec[32];
      snprintf(spec, sizeof spec, "random:2:%d", 100 + r);
      CHECK(nebula_mem_fault_inject(spec) == 0);
      errno = 0;
      char* g = realloc(h, 9u << 20);
      int e = errno;
      CHECK(nebula_mem_fault_inject("off") == 0);
      CHECK(g != NULL || e == ENOMEM);
      if (g == NULL) {
        refused++;
        CHECK(nebula_usable_size(h) == before);
        g = h;
      }
      size_t usable = nebula_usable_size(g);
      memset(g, 5, usable);
      if (!write_faults(g + usable)) fprintf(stderr, "secure_props: grown block %d has no guard\n", r);
      CHECK(write_faults(g + usable));
      free(g);
    }
    CHECK(nebula_mem_faults_injected() > injected);
    CHECK(refused > 0);
    for (int k = 0; k < H; k++) {
      if (huge[k] == NULL) continue;
      made++;
      size_t usable = nebula_usable_size(huge[k]);
      memset(huge[k], 4, usable);
      if (!write_faults(huge[k] + usable)) fprintf(stderr, "secure_props: huge block %d has no guard\n", k);
      CHECK(write_faults(huge[k] + usable));
    }
    for (int k = 0; k < S; k++) {
      if (segs[k] == NULL) continue;
      made++;
      char* guard = (char*)SEGMENT_OF(segs[k]) + 4 * 1024 * 1024 - 64 * 1024;
      if (!write_faults(guard)) fprintf(stderr, "secure_props: segment of block %d has no guard\n", k);
      CHECK(write_faults(guard));
    }
    CHECK(made > 0);
    for (int k = 0; k < H; k++) free(huge[k]);
    for (int k = 0; k < S; k++) free(segs[k]);
  }
  for (int i = 0; i < N; i++)
    if (i != 10 && i != 11) free(b[i]);
  printf("secure_props: ok (%d of %d consecutive blocks adjacent, links encoded, guard faults, also after realloc in place, aligned blocks clear of it, no block without its guard when guards are refused, no pages made by a loop of temporaries)\n", sequential, N);
  return 0;
}
