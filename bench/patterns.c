/* patterns: allocation patterns outside the benchmark table, each a few lines, timed and with
 * its peak RSS, to be run under every allocator with LD_PRELOAD (docs/performance.md, "Beyond
 * the table"). One pattern per run:
 *
 *   oversubscribed  16 threads on the machine's cores pass blocks of 16-515 bytes around a ring
 *                   of mailboxes (mutex-protected); every block dies on another thread
 *   calloc-1m       3,000 times calloc(1, 1 MiB), one byte read and one written, free
 *   realloc-grow    20 times one buffer grown by 50 bytes at a time to 10 MB with realloc
 *   memalign-page   300 rounds of 1,000 posix_memalign(4096, 4096), written, freed
 *   thread-per-task 5,000 threads one after another, 64 blocks of 64-2080 bytes each
 *   fork            300 fork + child malloc/free + _exit + waitpid, 100 blocks live in the parent
 *   memalign-2m     50 rounds of 200 posix_memalign(2 MiB, 100000), written, freed
 *   big-random      200,000 replacements in a working set of 64 blocks of 64 KiB-1.1 MiB
 *   big-many        200,000 replacements in a working set of 1,024 blocks of 64 KiB-1.1 MiB
 *                   (about 600 MiB live, 150 segments: the cost of finding a span)
 *   big-whole       20,000 replacements in a working set of 256 blocks of 64 KiB-1.1 MiB, each
 *                   written whole (page faults when freed memory is given back and reused)
 *   task-big        1,000 threads one after another, each with 4 MiB in blocks of 64 KiB-1 MiB
 *   many-threads    1,000 threads alive at once, 20 blocks of 16-2000 bytes each, then all exit
 *   handoff-big     a producer passes 20,000 blocks of 256 KiB to a consumer (queue of 16)
 *   calloc-100m     30 times calloc(1, 100 MB), every 64th page written, free
 *   shrink          200,000 blocks of 1-4 KiB, each shrunk by realloc to 16-64 bytes, all kept
 *   mid-replace     500,000 replacements in a working set of 4,096 blocks of 4-8 KiB (a cache
 *                   of I/O buffers: pages of 8-16 blocks, most allocations find theirs empty)
 *   buf-replace     500,000 replacements in a working set of 1,024 blocks of 8-32 KiB (request
 *                   and compression buffers: medium pages of 2-8 blocks)
 *   huge-many       5,000 blocks of 4-8 MiB (30 GB of address space, a byte written at each
 *                   end), then 50,000 of them replaced at random: the search for free chunks
 *   big-heap        8,000,000 blocks of 16-511 bytes built (about 2.3 GiB: a database's or a
 *                   cache's heap), then 10,000,000 of them replaced at random
 *   size-drift      2 threads, each keeping 48 MiB live in blocks whose sizes drift from 16-255
 *                   B to 128 KiB-2 MiB and back over 6 s of wall time (a server whose requests
 *                   change; the time printed is the 6 s, the peak RSS is the figure), every OS
 *                   page of each block written; a quarter of the blocks die on the other thread
 *                   (mailboxes of 256 slots)
 *   big-rounds      200 rounds of 40 blocks of 1-4 MiB, every OS page of each written, all
 *                   freed at the end of each round (buffers of a batch job or of a frame)
 *   buf-rounds      1,000 rounds of 50 blocks of 2 MiB, a byte written at each end, all freed
 *                   at the end of each round (the cost of the allocator's own work per block)
 *   vec-double      64 buffers doubled together by realloc from 16 bytes to 64 MiB, the last
 *                   byte written after each doubling (vectors that grow side by side)
 *   shrink-fit      20 rounds of 100 buffers of 8 MiB, 20 KB-2 MB of each written, then shrunk
 *                   to that size by realloc (a file read into a big buffer), all freed
 *
 *   build/bench/patterns NAME     prints "NAME time_s peak_rss_kib"
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *must(void *p) {
  if (p == NULL) {
    fprintf(stderr, "patterns: allocation failed\n");
    exit(1);
  }
  return p;
}

static volatile long sink;

enum { RING = 16, BOX = 4096 };
typedef struct {
  pthread_mutex_t m;
  void *q[BOX];
  int n;
} box_t;
static box_t boxes[RING];

static void *ring_thread(void *arg) {
  long id = (long)arg;
  unsigned s = (unsigned)id * 7 + 1;
  static __thread void *tmp[BOX];
  for (int i = 0; i < 200000; i++) {
    s = s * 1103515245 + 12345;
    size_t n = 16 + (s >> 16) % 500;
    char *p = must(malloc(n));
    p[0] = 1;
    box_t *b = &boxes[(id + 1) % RING];
    pthread_mutex_lock(&b->m);
    if (b->n < BOX) {
      b->q[b->n++] = p;
      p = NULL;
    }
    pthread_mutex_unlock(&b->m);
    free(p);
    if ((i & 15) == 0) {
      box_t *m = &boxes[id];
      pthread_mutex_lock(&m->m);
      int k = m->n;
      memcpy(tmp, m->q, (size_t)k * sizeof(void *));
      m->n = 0;
      pthread_mutex_unlock(&m->m);
      for (int j = 0; j < k; j++) free(tmp[j]);
    }
  }
  return NULL;
}

static void *short_task(void *arg) {
  (void)arg;
  void *a[64];
  for (int i = 0; i < 64; i++) {
    a[i] = must(malloc(64 + (size_t)i * 32));
    memset(a[i], 1, 64);
  }
  for (int i = 0; i < 64; i++) free(a[i]);
  return NULL;
}

static void *big_task(void *arg) {
  (void)arg;
  void *a[64];
  int k = 0;
  size_t total = 0;
  unsigned s = (unsigned)(uintptr_t)&a;
  while (total < (4u << 20) && k < 64) {
    s = s * 1103515245 + 12345;
    size_t n = 65536 + (s >> 8) % (1u << 20);
    a[k] = must(malloc(n));
    memset(a[k], 1, n);
    total += n;
    k++;
  }
  for (int i = 0; i < k; i++) free(a[i]);
  return NULL;
}

static pthread_barrier_t all_started;
static void *resident_task(void *arg) {
  (void)arg;
  void *a[20];
  for (int i = 0; i < 20; i++) {
    a[i] = must(malloc(16 + (size_t)i * 100));
    memset(a[i], 1, 16);
  }
  pthread_barrier_wait(&all_started);
  for (int i = 0; i < 20; i++) free(a[i]);
  return NULL;
}

enum { QCAP = 16 };
static void *queue[QCAP];
static int qhead, qtail, qcount, qdone;
static pthread_mutex_t qm = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qc = PTHREAD_COND_INITIALIZER;
static void *consumer(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&qm);
    while (qcount == 0 && !qdone) pthread_cond_wait(&qc, &qm);
    if (qcount == 0) {
      pthread_mutex_unlock(&qm);
      return NULL;
    }
    void *p = queue[qhead];
    qhead = (qhead + 1) % QCAP;
    qcount--;
    pthread_cond_broadcast(&qc);
    pthread_mutex_unlock(&qm);
    sink += ((char *)p)[4096];
    free(p);
  }
}

/* Threads one after another, each created, running fn and joined before the next. */
static void one_after_another(void *(*fn)(void *), int count) {
  for (int i = 0; i < count; i++) {
    pthread_t th;
    if (pthread_create(&th, NULL, fn, NULL) != 0) {
      fprintf(stderr, "patterns: pthread_create failed\n");
      exit(1);
    }
    pthread_join(th, NULL);
  }
}

/* size-drift: the live bytes stay at DRIFT_LIVE per thread while the sizes move. */
#define DRIFT_LIVE (48u << 20)
#define DRIFT_SLOTS (4u << 20)
#define DRIFT_SECONDS 6.0
static double drift_start;
static void *drift_box[2][256];
static pthread_mutex_t drift_m = PTHREAD_MUTEX_INITIALIZER;
static void *drift_thread(void *arg) {
  long id = (long)arg;
  unsigned s = 7919u * (unsigned)id + 1;
  void **slot = must(malloc(DRIFT_SLOTS * sizeof(void *)));
  size_t *size = must(malloc(DRIFT_SLOTS * sizeof(size_t)));
  size_t count = 0, live = 0;
  for (;;) {
    double phase = (now_s() - drift_start) / DRIFT_SECONDS, tri = phase < 0.5 ? 2 * phase : 2 - 2 * phase;
    if (phase >= 1) break;
    for (int k = 0; k < 1000; k++) {
      s = s * 1103515245 + 12345;
      /* sizes of 2^lg to 2^(lg+1) - 1 bytes, lg 4-7 at first and 17-20 at the top */
      unsigned lg = 4 + (unsigned)(tri * 13.0 * 256) / 256 + ((s >> 8) & 3);
      size_t n = ((size_t)1 << lg) - 1 + ((s >> 12) % ((size_t)1 << lg));
      char *p = must(malloc(n));
      memset(p, k, n < 64 ? n : 64);  /* every OS page of the block written */
      for (size_t o = 4096 - ((uintptr_t)p & 4095); o < n; o += 4096) p[o] = (char)k;
      p[n - 1] = (char)k;
      if (count < DRIFT_SLOTS) {
        slot[count] = p;
        size[count++] = n;
        live += n;
      } else {
        free(p);
      }
      while (live > DRIFT_LIVE && count > 0) {
        s = s * 1103515245 + 12345;
        size_t i = (s >> 4) % count;
        void *q = slot[i];
        live -= size[i];
        slot[i] = slot[--count];
        size[i] = size[count];
        s = s * 1103515245 + 12345;
        if (((s >> 8) & 3) == 0) {  /* to the other thread */
          unsigned j = (s >> 12) % 256;
          pthread_mutex_lock(&drift_m);
          void *old = drift_box[1 - id][j];
          drift_box[1 - id][j] = q;
          pthread_mutex_unlock(&drift_m);
          free(old);
        } else {
          free(q);
        }
      }
    }
    pthread_mutex_lock(&drift_m);  /* take what the other thread sent */
    void *mine[256];
    memcpy(mine, drift_box[id], sizeof mine);
    memset(drift_box[id], 0, sizeof mine);
    pthread_mutex_unlock(&drift_m);
    for (int j = 0; j < 256; j++) free(mine[j]);
  }
  for (size_t i = 0; i < count; i++) free(slot[i]);
  free(slot);
  free(size);
  return NULL;
}

/* `ops` replacements at random in a working set of `live` blocks of 64 KiB-1.1 MiB; each new
 * block has its first and last byte written, or all of it with `whole`. */
static void replace_random(int live, int ops, size_t min, size_t range, int whole) {
  void **a = must(calloc((size_t)live, sizeof *a));
  unsigned s = 1;
  for (int i = 0; i < ops; i++) {
    s = s * 1103515245 + 12345;
    int k = (int)((s >> 8) % (unsigned)live);
    free(a[k]);
    size_t n = min + (s >> 12) % range;
    a[k] = must(malloc(n));
    if (whole) {
      memset(a[k], 1, n);
    } else {
      ((char *)a[k])[0] = 1;
      ((char *)a[k])[n - 1] = 1;
    }
  }
  for (int k = 0; k < live; k++) free(a[k]);
  free(a);
}

static void run(const char *name) {
  if (!strcmp(name, "oversubscribed")) {
    pthread_t th[RING];
    for (int i = 0; i < RING; i++) pthread_mutex_init(&boxes[i].m, NULL);
    for (long i = 0; i < RING; i++) pthread_create(&th[i], NULL, ring_thread, (void *)i);
    for (int i = 0; i < RING; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < RING; i++)
      for (int j = 0; j < boxes[i].n; j++) free(boxes[i].q[j]);
  } else if (!strcmp(name, "calloc-1m")) {
    for (int i = 0; i < 3000; i++) {
      char *p = must(calloc(1, 1 << 20));
      sink += p[i * 97 % (1 << 20)];
      p[i] = 1;
      free(p);
    }
  } else if (!strcmp(name, "realloc-grow")) {
    for (int r = 0; r < 20; r++) {
      char *p = NULL;
      size_t n = 0;
      for (int i = 0; i < 200000; i++) {
        n += 50;
        p = must(realloc(p, n));
        p[n - 1] = 1;
      }
      free(p);
    }
  } else if (!strcmp(name, "memalign-page")) {
    void *a[1000];
    for (int r = 0; r < 300; r++) {
      for (int i = 0; i < 1000; i++) {
        if (posix_memalign(&a[i], 4096, 4096) != 0) must(NULL);
        ((char *)a[i])[0] = 1;
      }
      for (int i = 0; i < 1000; i++) free(a[i]);
    }
  } else if (!strcmp(name, "thread-per-task")) {
    one_after_another(short_task, 5000);
  } else if (!strcmp(name, "fork")) {
    void *a[100];
    for (int i = 0; i < 100; i++) a[i] = must(malloc(1000));
    for (int i = 0; i < 300; i++) {
      pid_t p = fork();
      if (p == 0) {
        void *x = malloc(100);
        free(x);
        _exit(x == NULL);
      }
      waitpid(p, NULL, 0);
    }
    for (int i = 0; i < 100; i++) free(a[i]);
  } else if (!strcmp(name, "memalign-2m")) {
    void *a[200];
    for (int r = 0; r < 50; r++) {
      for (int i = 0; i < 200; i++) {
        if (posix_memalign(&a[i], 1 << 21, 100000) != 0) must(NULL);
        ((char *)a[i])[0] = 1;
      }
      for (int i = 0; i < 200; i++) free(a[i]);
    }
  } else if (!strcmp(name, "big-random")) {
    replace_random(64, 200000, 65536, 1 << 20, 0);
  } else if (!strcmp(name, "big-many")) {
    replace_random(1024, 200000, 65536, 1 << 20, 0);
  } else if (!strcmp(name, "big-whole")) {
    replace_random(256, 20000, 65536, 1 << 20, 1);
  } else if (!strcmp(name, "mid-replace")) {
    replace_random(4096, 500000, 4096, 4096, 0);
  } else if (!strcmp(name, "buf-replace")) {
    replace_random(1024, 500000, 8193, 24576, 0);
  } else if (!strcmp(name, "huge-many")) {
    enum { N = 5000, OPS = 50000 };
    char **a = must(malloc(N * sizeof *a));
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < N + OPS; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      size_t k = i < N ? (size_t)i : (size_t)(x % N), n = (4u << 20) + (x >> 20) % (4u << 20);
      if (i >= N) free(a[k]);
      a[k] = must(malloc(n));
      a[k][0] = 1;
      a[k][n - 1] = 1;
    }
    for (int i = 0; i < N; i++) free(a[i]);
    free(a);
  } else if (!strcmp(name, "big-heap")) {
    enum { N = 8000000, OPS = 10000000 };
    char **a = must(malloc(N * sizeof *a));
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      size_t n = 16 + x % 496;
      a[i] = must(malloc(n));
      memset(a[i], 1, n < 64 ? n : 64);
    }
    for (int i = 0; i < OPS; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      size_t k = (size_t)(x % N), n = 16 + (x >> 32) % 496;
      sink += a[k][0];
      free(a[k]);
      a[k] = must(malloc(n));
      a[k][0] = 1;
    }
    for (int i = 0; i < N; i++) free(a[i]);
    free(a);
  } else if (!strcmp(name, "task-big")) {
    one_after_another(big_task, 1000);
  } else if (!strcmp(name, "many-threads")) {
    enum { T = 1000 };
    static pthread_t th[T];
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 64 << 10);
    pthread_barrier_init(&all_started, NULL, T + 1);
    for (int i = 0; i < T; i++) pthread_create(&th[i], &at, resident_task, NULL);
    pthread_barrier_wait(&all_started);
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  } else if (!strcmp(name, "handoff-big")) {
    pthread_t c;
    pthread_create(&c, NULL, consumer, NULL);
    for (int i = 0; i < 20000; i++) {
      char *p = must(malloc(256 << 10));
      memset(p, i, 8192);
      pthread_mutex_lock(&qm);
      while (qcount == QCAP) pthread_cond_wait(&qc, &qm);
      queue[qtail] = p;
      qtail = (qtail + 1) % QCAP;
      qcount++;
      pthread_cond_broadcast(&qc);
      pthread_mutex_unlock(&qm);
    }
    pthread_mutex_lock(&qm);
    qdone = 1;
    pthread_cond_broadcast(&qc);
    pthread_mutex_unlock(&qm);
    pthread_join(c, NULL);
  } else if (!strcmp(name, "calloc-100m")) {
    for (int r = 0; r < 30; r++) {
      char *p = must(calloc(1, 100u << 20));
      for (size_t o = 0; o < (100u << 20); o += 64 * 4096) {
        sink += p[o];
        p[o] = 1;
      }
      free(p);
    }
  } else if (!strcmp(name, "size-drift")) {
    pthread_t t[2];
    drift_start = now_s();
    for (long i = 0; i < 2; i++) pthread_create(&t[i], NULL, drift_thread, (void *)i);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 256; j++) free(drift_box[i][j]);
  } else if (!strcmp(name, "big-rounds")) {
    enum { LIVE = 40, ROUNDS = 200 };
    char *a[LIVE];
    unsigned s = 11;
    for (int r = 0; r < ROUNDS; r++) {
      for (int i = 0; i < LIVE; i++) {
        s = s * 1103515245 + 12345;
        size_t n = (1u << 20) + (s >> 4) % (3u << 20);
        a[i] = must(malloc(n));
        for (size_t o = 0; o < n; o += 4096) a[i][o] = (char)r;
      }
      for (int i = 0; i < LIVE; i++) free(a[i]);
    }
  } else if (!strcmp(name, "buf-rounds")) {
    enum { LIVE = 50, ROUNDS = 1000 };
    const size_t n = 2u << 20;
    char *a[LIVE];
    for (int r = 0; r < ROUNDS; r++) {
      for (int i = 0; i < LIVE; i++) {
        a[i] = must(malloc(n));
        a[i][0] = a[i][n - 1] = (char)r;
      }
      for (int i = 0; i < LIVE; i++) free(a[i]);
    }
  } else if (!strcmp(name, "vec-double")) {
    enum { VECS = 64, DOUBLINGS = 22 };
    char *v[VECS];
    size_t cap[VECS];
    for (int i = 0; i < VECS; i++) v[i] = must(malloc(cap[i] = 16));
    for (int d = 0; d < DOUBLINGS; d++)
      for (int i = 0; i < VECS; i++) {
        cap[i] *= 2;
        v[i] = must(realloc(v[i], cap[i]));
        v[i][cap[i] - 1] = 1;
      }
    for (int i = 0; i < VECS; i++) free(v[i]);
  } else if (!strcmp(name, "shrink-fit")) {
    enum { LIVE = 100, ROUNDS = 20 };
    void *a[LIVE];
    for (int r = 0; r < ROUNDS; r++) {
      for (int i = 0; i < LIVE; i++) {
        char *p = must(malloc(8u << 20));
        size_t n = (size_t)(i * 37 % 100 + 1) * 20000;
        memset(p, r, n);
        a[i] = must(realloc(p, n));
      }
      for (int i = 0; i < LIVE; i++) free(a[i]);
    }
  } else if (!strcmp(name, "shrink")) {
    enum { N = 200000 };
    static void *a[N];
    unsigned s = 7;
    for (int i = 0; i < N; i++) {
      s = s * 1103515245 + 12345;
      size_t n = 1024 + (s >> 8) % 3072;
      char *p = must(malloc(n));
      memset(p, 2, n);
      a[i] = must(realloc(p, 16 + (s >> 4) % 49));
    }
    for (int i = 0; i < N; i++) free(a[i]);
  } else {
    fprintf(stderr, "patterns: unknown pattern %s\n", name);
    exit(2);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: patterns NAME (see the source for the list)\n");
    return 2;
  }
  double t = now_s();
  run(argv[1]);
  t = now_s() - t;
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long hwm = 0;
  while (f != NULL && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) hwm = atol(line + 6);
  if (f != NULL) fclose(f);
  printf("%s %.3f %ld\n", argv[1], t, hwm);
  return 0;
}
