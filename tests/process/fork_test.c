/* fork() while other threads allocate: 4 worker threads malloc/realloc/free continuously
 * (and publish some blocks into a shared, mutex-protected pool); the main thread forks 50
 * times. Each child verifies and frees blocks inherited from the parent (allocated by its main
 * thread and by worker threads that do not exist in the child), allocates and frees on its own,
 * starts a new thread that does the same, and _exit(0)s. The parent asserts that every child
 * exited 0. A child that hangs anywhere (even inside fork(), in an atfork handler, before it
 * could arm a timer) is killed with SIGKILL by the parent after 10 s and reported as a failure;
 * a watchdog thread that never allocates kills the current child and fails the test if the
 * parent itself is stuck for 50 s (meson's timeout is 60 s), so no process is left spinning. */
#include "../check.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

enum { WORKERS = 4, FORKS = 50, POOL = 256, LOCAL = 128 };

struct blk {
  void *p;
  size_t n;
  uint64_t seed;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blk pool[POOL];
static atomic_int stop_flag;
static atomic_int current_child; /* pid being waited for, 0 if none */
static atomic_int all_done;
static atomic_ulong worker_ops;

static void pool_prepare(void) { pthread_mutex_lock(&pool_lock); }
static void pool_parent(void) { pthread_mutex_unlock(&pool_lock); }
static void pool_child(void) { pthread_mutex_unlock(&pool_lock); }

static size_t pick_size(uint64_t *rng) {
  unsigned r = (unsigned)(nt_rand(rng) % 1000);
  if (r < 800) return 1 + nt_rand(rng) % 512;
  if (r < 970) return 512 + nt_rand(rng) % 32768;
  if (r < 998) return 32768 + nt_rand(rng) % 500000;
  return NT_MIB(1) + nt_rand(rng) % NT_MIB(4);
}

static void verify_blk(const struct blk *b, const char *who) {
  size_t bad = nt_verify(b->p, b->n, b->seed);
  CHECKF(bad == NT_OK, "%s: block %p (%zu bytes) damaged at %zu", who, b->p, b->n, bad);
}

static void *worker(void *arg) {
  uint64_t rng = 0xF0F0 + (uintptr_t)arg;
  struct blk local[LOCAL];
  memset(local, 0, sizeof local);
  while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
    for (int k = 0; k < 64; k++) {
      size_t s = nt_rand(&rng) % LOCAL;
      struct blk *b = &local[s];
      if (b->p) {
        verify_blk(b, "worker");
        unsigned act = (unsigned)(nt_rand(&rng) % 4);
        if (act == 0) {
          /* publish into the shared pool (the child may inherit it), taking the old one back */
          pthread_mutex_lock(&pool_lock);
          struct blk *slot = &pool[nt_rand(&rng) % POOL];
          struct blk old = *slot;
          *slot = *b;
          pthread_mutex_unlock(&pool_lock);
          if (old.p) {
            verify_blk(&old, "worker (pool)");
            free(old.p);
          }
          b->p = NULL;
          continue;
        }
        if (act == 1) {
          size_t nn = pick_size(&rng);
          void *q = realloc(b->p, nn);
          CHECK(q != NULL);
          size_t keep = b->n < nn ? b->n : nn;
          CHECK(nt_verify(q, keep, b->seed) == NT_OK);
          b->p = q;
          b->n = nn;
          nt_fill(q, nn, b->seed);
          continue;
        }
        free(b->p);
        b->p = NULL;
      } else {
        b->n = pick_size(&rng);
        b->p = (nt_rand(&rng) & 1) ? malloc(b->n) : calloc(1, b->n);
        CHECK(b->p != NULL);
        b->seed = nt_rand(&rng);
        nt_fill(b->p, b->n, b->seed);
      }
    }
    atomic_fetch_add_explicit(&worker_ops, 64, memory_order_relaxed);
  }
  for (int s = 0; s < LOCAL; s++)
    if (local[s].p) {
      verify_blk(&local[s], "worker exit");
      free(local[s].p);
    }
  return NULL;
}

static void *child_thread(void *arg) {
  uint64_t rng = (uintptr_t)arg | 1;
  struct blk b[200];
  for (int i = 0; i < 200; i++) {
    b[i].n = pick_size(&rng);
    b[i].p = malloc(b[i].n);
    CHECK(b[i].p != NULL);
    b[i].seed = nt_rand(&rng);
    nt_fill(b[i].p, b[i].n, b[i].seed);
  }
  for (int i = 0; i < 200; i++) {
    verify_blk(&b[i], "child thread");
    free(b[i].p);
  }
  return NULL;
}

static void child_main(struct blk *inherited, int ninh, unsigned which) {
  alarm(20); /* a deadlocked child dies with SIGALRM: reported, never hangs */
  uint64_t rng = 0xC41D + which;
  /* blocks the parent's main thread allocated before fork */
  for (int i = 0; i < ninh; i++) {
    verify_blk(&inherited[i], "child (inherited from parent main thread)");
    inherited[i].p = realloc(inherited[i].p, inherited[i].n * 2 + 1);
    CHECK(inherited[i].p != NULL);
    CHECK(nt_verify(inherited[i].p, inherited[i].n, inherited[i].seed) == NT_OK);
    free(inherited[i].p);
  }
  /* blocks the worker threads published: their owning threads do not exist here */
  pthread_mutex_lock(&pool_lock);
  for (int i = 0; i < POOL; i++) {
    if (!pool[i].p) continue;
    verify_blk(&pool[i], "child (inherited from a worker thread)");
    free(pool[i].p);
    pool[i].p = NULL;
  }
  pthread_mutex_unlock(&pool_lock);
  /* own allocations */
  void *mine[300];
  for (int i = 0; i < 300; i++) {
    size_t n = pick_size(&rng);
    mine[i] = malloc(n);
    CHECK(mine[i] != NULL);
    memset(mine[i], i, n);
  }
  for (int i = 0; i < 300; i++) free(mine[i]);
  /* a brand-new thread in the child */
  pthread_t t;
  CHECK(pthread_create(&t, NULL, child_thread, (void *)(uintptr_t)(which * 7 + 1)) == 0);
  CHECK(pthread_join(t, NULL) == 0);
  _exit(0);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void say(const char *msg) { /* no stdio, no malloc */
  ssize_t r = write(2, msg, strlen(msg));
  (void)r;
}

/* Never allocates: only nanosleep, kill, write, _exit. */
static void *watchdog(void *arg) {
  (void)arg;
  for (int i = 0; i < 500; i++) { /* 50 s */
    if (atomic_load(&all_done)) return NULL;
    sleep_ms(100);
  }
  int c = atomic_load(&current_child);
  if (c > 0) kill(c, SIGKILL);
  say("fork_test: FAIL: the parent made no progress for 50 s (deadlock in the parent?)\n");
  _exit(1);
}

/* Waits for `pid` for at most 10 s; a child still running then is killed and reported. */
static int wait_child(pid_t pid, unsigned f) {
  int st = 0;
  for (int i = 0; i < 1000; i++) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    CHECK(r >= 0);
    if (r == pid) {
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
      if (WIFSIGNALED(st))
        fprintf(stderr, "fork_test: child %u killed by signal %d%s\n", f, WTERMSIG(st),
                WTERMSIG(st) == SIGALRM ? " (hung: its own 20 s alarm expired)" : "");
      else
        fprintf(stderr, "fork_test: child %u exited with status %d\n", f, WEXITSTATUS(st));
      return 1;
    }
    sleep_ms(10);
  }
  kill(pid, SIGKILL);
  CHECK(waitpid(pid, &st, 0) == pid);
  fprintf(stderr, "fork_test: child %u hung for 10 s (deadlock or endless loop after fork), killed\n", f);
  return 1;
}

int main(void) {
  CHECK_PRELOAD();
  pthread_t wd;
  CHECK(pthread_create(&wd, NULL, watchdog, NULL) == 0);
  CHECK(pthread_atfork(pool_prepare, pool_parent, pool_child) == 0);

  pthread_t th[WORKERS];
  for (uintptr_t i = 0; i < WORKERS; i++) CHECK(pthread_create(&th[i], NULL, worker, (void *)i) == 0);
  /* let the workers get going so the first fork already lands in the middle of activity */
  while (atomic_load(&worker_ops) < 10000) sched_yield();

  uint64_t rng = 12345;
  int failed = 0;
  for (unsigned f = 0; f < FORKS; f++) {
    struct blk inh[32];
    for (int i = 0; i < 32; i++) {
      inh[i].n = pick_size(&rng);
      inh[i].p = malloc(inh[i].n);
      CHECK(inh[i].p != NULL);
      inh[i].seed = nt_rand(&rng);
      nt_fill(inh[i].p, inh[i].n, inh[i].seed);
    }
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) child_main(inh, 32, f);
    atomic_store(&current_child, pid);
    for (int i = 0; i < 32; i++) {
      verify_blk(&inh[i], "parent after fork");
      free(inh[i].p);
    }
    failed += wait_child(pid, f);
    atomic_store(&current_child, 0);
    if (failed >= 2) break; /* enough evidence; do not spend the whole timeout */
  }
  atomic_store(&stop_flag, 1);
  for (int i = 0; i < WORKERS; i++) CHECK(pthread_join(th[i], NULL) == 0);
  for (int i = 0; i < POOL; i++)
    if (pool[i].p) {
      verify_blk(&pool[i], "parent pool");
      free(pool[i].p);
    }
  atomic_store(&all_done, 1);
  CHECK(pthread_join(wd, NULL) == 0);
  CHECKF(failed == 0, "%d children failed (see above)", failed);
  printf("fork_test: ok (%d forks under 4 allocating threads, all children exited 0)\n", FORKS);
  return 0;
}
