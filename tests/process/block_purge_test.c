/* A program that frees most of its memory and then waits in a call that blocks until an event or
 * a time (an event loop in epoll_wait with a timer, a loop in nanosleep) gets that memory back
 * to the OS soon after the purge delay, though it never calls the allocator again and no other
 * thread runs: the wrappers (interpose/block.cpp) purge what is due before the real call.
 *
 * Each round fills 40 MiB with 1 KiB blocks, keeps one in 2048 (so that every segment keeps live
 * blocks and the freed memory is free slices of live segments, which only a purge gives back)
 * and frees the rest. Then it calls one function in a loop, with a 20 ms timeout, until RSS
 * has fallen by 24 MiB, for at most 3 s. Without the wrappers RSS stays where it is.
 *
 * The first round calls poll with a zero timeout (a check for events that does not block) for
 * 1 s: it must not purge. The kept blocks must keep their contents throughout.
 *
 * Then one call each that starts before anything is due and lasts past it: epoll_wait, poll,
 * ppoll, pselect and select with no timeout until a timerfd fires 1.2 s later, nanosleep, usleep
 * and clock_nanosleep (to a time 1.2 s ahead) of 1.2 s, select of 1.2 s (its timeout must read 0
 * after), sleep of 1 s, poll of 0.8 s on no file: the wrappers split such a wait where the freed memory falls due, so RSS must be 24 MiB
 * lower when it ends; each call must end as the one call would (the timer's event, 0 after the
 * whole time and not before). A nanosleep of 1.2 s that SIGALRM interrupts at 0.7 s must report
 * the time left of the whole sleep (0.5 s).
 *
 * A signal during a split wait ends it as it would end the one call: SIGUSR1 sent 0.6 s into
 * poll(-1), epoll_wait(-1), nanosleep(5 s) and a ppoll(NULL) whose mask unblocks SIGUSR1 (blocked
 * outside, the race-free pattern) must make each return EINTR (not hang, not sleep on), and the
 * thread's signal mask must be what it was before the call.
 *
 * Last, the program runs itself again with NEBULA_MEM_WAIT_HOOKS=0: one round of 20 ms polls
 * for 1.5 s must leave RSS where it was (the switch turns the wrappers into plain calls). */
#include "../check.h"

#include <pthread.h>

#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>

enum { BLOCK = 1024, NBLOCKS = (40 << 20) / BLOCK, KEEP_EVERY = 2048 };
static void *blocks[NBLOCKS];
static int epfd;

static void fill_and_free_most(uint64_t id) {
  for (int i = 0; i < NBLOCKS; i++) {
    if (i % KEEP_EVERY == 0 && blocks[i] != NULL) continue;
    blocks[i] = malloc(nt_opaque_size(BLOCK));
    CHECK(blocks[i] != NULL);
    nt_fill(blocks[i], BLOCK, (uint64_t)i + (i % KEEP_EVERY == 0 ? 0 : id));
  }
  for (int i = 0; i < NBLOCKS; i++) {
    if (i % KEEP_EVERY == 0) continue;
    CHECK(nt_verify(blocks[i], BLOCK, (uint64_t)i + id) == NT_OK);
    free(blocks[i]);
    blocks[i] = NULL;
  }
}

static void verify_kept(void) {
  for (int i = 0; i < NBLOCKS; i += KEEP_EVERY) CHECK(nt_verify(blocks[i], BLOCK, (uint64_t)i) == NT_OK);
}

/* One blocking call of about 20 ms (zero: one that does not block). */
static void call(int which, int zero) {
  const int ms = zero ? 0 : 20;
  struct timespec ts = {0, (long)ms * 1000000L};
  struct timeval tv = {0, ms * 1000};
  struct epoll_event ev;
  struct pollfd none;
  switch (which) {
    case 0: CHECK(poll(&none, 0, ms) == 0); break;
    case 1: CHECK(epoll_wait(epfd, &ev, 1, ms) == 0); break;
    case 2: CHECK(epoll_pwait(epfd, &ev, 1, ms, NULL) == 0); break;
    case 3: CHECK(select(0, NULL, NULL, NULL, &tv) == 0); break;
    case 4: CHECK(pselect(0, NULL, NULL, NULL, &ts, NULL) == 0); break;
    case 5: CHECK(ppoll(&none, 0, &ts, NULL) == 0); break;
    case 6: CHECK(nanosleep(&ts, NULL) == 0); break;
    case 7: CHECK(clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL) == 0); break;
    case 8: CHECK(usleep((useconds_t)ms * 1000) == 0); break;
  }
}

static void on_alarm(int sig) { (void)sig; }

static volatile sig_atomic_t usr1_seen;
static void on_usr1(int sig) { (void)sig; usr1_seen = 1; }
static pthread_t main_thread;
static void *send_usr1_later(void *arg) {
  (void)arg;
  struct timespec ts = {0, 600000000L};
  nanosleep(&ts, NULL);
  pthread_kill(main_thread, SIGUSR1);
  return NULL;
}

/* One wait that a split would cut, ended by SIGUSR1 at 0.6 s: EINTR, the mask kept. */
static void signal_round(int which) {
  static const char *const what[] = {"poll(-1)", "epoll_wait(-1)", "nanosleep(5 s)", "ppoll(NULL, unblocking mask)"};
  fill_and_free_most((uint64_t)(which + 50) * 1000000);
  sigset_t before, after, usr1, unblocked;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  if (which == 3) CHECK(pthread_sigmask(SIG_BLOCK, &usr1, NULL) == 0);
  CHECK(pthread_sigmask(SIG_SETMASK, NULL, &before) == 0);
  unblocked = before;
  sigdelset(&unblocked, SIGUSR1);
  usr1_seen = 0;
  pthread_t t;
  CHECK(pthread_create(&t, NULL, send_usr1_later, NULL) == 0);
  double t0 = nt_now_s();
  struct epoll_event ev;
  struct pollfd none;
  struct timespec five = {5, 0};
  int r = 0;
  switch (which) {
    case 0: r = poll(&none, 0, -1); break;
    case 1: r = epoll_wait(epfd, &ev, 1, -1); break;
    case 2: r = nanosleep(&five, NULL); break;
    case 3: r = ppoll(&none, 0, NULL, &unblocked); break;
  }
  int err = errno;
  double spent = nt_now_s() - t0;
  CHECK(pthread_join(t, NULL) == 0);
  CHECKF(r == -1 && err == EINTR && usr1_seen, "%s returned %d (errno %d, handler ran: %d) after %.2f s; "
         "want -1 with EINTR at the signal", what[which], r, err, (int)usr1_seen, spent);
  CHECKF(spent < 2.0, "%s ended %.2f s in, the signal came at 0.6 s", what[which], spent);
  CHECK(pthread_sigmask(SIG_SETMASK, NULL, &after) == 0);
  CHECKF(sigismember(&after, SIGUSR1) == sigismember(&before, SIGUSR1) &&
         sigismember(&after, SIGTERM) == sigismember(&before, SIGTERM),
         "%s left the signal mask changed", what[which]);
  if (which == 3) CHECK(pthread_sigmask(SIG_UNBLOCK, &usr1, NULL) == 0);
  verify_kept();
}

static const char *const names[] = {"poll", "epoll_wait", "epoll_pwait", "select", "pselect",
                                    "ppoll", "nanosleep", "clock_nanosleep", "usleep"};

/* With the hooks switched off: nothing goes back while the program polls. */
static int hooks_off_round(void) {
  fill_and_free_most(40000000);
  size_t rss_full = nt_rss_bytes();
  double t0 = nt_now_s();
  while (nt_now_s() - t0 < 1.5) call(0, 0);
  size_t rss = nt_rss_bytes();
  CHECKF(rss + NT_MIB(16) > rss_full,
         "RSS %zu MiB after 1.5 s of poll() with NEBULA_MEM_WAIT_HOOKS=0, %zu MiB before: the "
         "switch did not turn the hook off", rss >> 20, rss_full >> 20);
  verify_kept();
  return 0;
}

int main(int argc, char **argv) {
  CHECK_PRELOAD();
  epfd = epoll_create1(0);
  CHECK(epfd >= 0);
  if (argc > 1 && strcmp(argv[1], "hooks-off") == 0) return NT_AGAINST_GLIBC ? 0 : hooks_off_round();

  /* Round 0: polls that do not block leave the memory alone. */
  fill_and_free_most(1000000);
  size_t rss_full = nt_rss_bytes();
  CHECKF(rss_full > NT_MIB(32), "RSS only %zu MiB after filling 40 MiB", rss_full >> 20);
  double t0 = nt_now_s();
  while (nt_now_s() - t0 < 1.0) call(0, 1);
  size_t rss = nt_rss_bytes();
  if (!NT_AGAINST_GLIBC)
    CHECKF(rss + NT_MIB(16) > rss_full,
           "RSS %zu MiB after 1 s of poll() with a zero timeout, %zu MiB before: a call that does "
           "not block purged", rss >> 20, rss_full >> 20);

  for (int which = 0; which < (int)(sizeof names / sizeof names[0]); which++) {
    fill_and_free_most((uint64_t)(which + 1) * 1000000);
    rss_full = nt_rss_bytes();
    t0 = nt_now_s();
    rss = rss_full;
    while (rss + NT_MIB(24) > rss_full && nt_now_s() - t0 < 3.0) {
      call(which, 0);
      rss = nt_rss_bytes();
    }
    if (!NT_AGAINST_GLIBC)  /* glibc keeps free chunks below a live one resident */
      CHECKF(rss + NT_MIB(24) <= rss_full,
             "RSS %zu MiB after %.1f s in %s() with 32 MiB freed, %zu MiB before (bound: 24 MiB "
             "less within 3 s)", rss >> 20, nt_now_s() - t0, names[which], rss_full >> 20);
    verify_kept();
  }
  /* One long wait each, begun before anything is due. */
  int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
  CHECK(tfd >= 0);
  struct epoll_event tev = {.events = EPOLLIN};
  CHECK(epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev) == 0);
  static const char *const long_names[] = {"epoll_wait(-1)", "poll(-1)", "nanosleep(1.2 s)",
                                           "poll(0.8 s)", "ppoll(NULL)", "pselect(NULL)",
                                           "clock_nanosleep(TIMER_ABSTIME, +1.2 s)",
                                           "usleep(1.2 s)", "sleep(1 s)", "select(NULL)",
                                           "select(1.2 s)"};
  for (int which = 0; which < 11; which++) {
    fill_and_free_most((uint64_t)(which + 20) * 1000000);
    rss_full = nt_rss_bytes();
    struct itimerspec its = {{0, 0}, {1, 200000000}};
    CHECK(timerfd_settime(tfd, 0, &its, NULL) == 0);
    t0 = nt_now_s();
    struct epoll_event ev;
    struct pollfd pfd = {tfd, POLLIN, 0};
    struct timespec ts = {1, 200000000};
    double spent = 0;
    switch (which) {
      case 0: CHECK(epoll_wait(epfd, &ev, 1, -1) == 1); break;
      case 1: CHECK(poll(&pfd, 1, -1) == 1 && (pfd.revents & POLLIN)); break;
      case 2: CHECK(nanosleep(&ts, NULL) == 0); break;
      case 3: CHECK(poll(&pfd, 0, 800) == 0); break;
      case 4: CHECK(ppoll(&pfd, 1, NULL, NULL) == 1 && (pfd.revents & POLLIN)); break;
      case 5: {
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(tfd, &rs);
        CHECK(pselect(tfd + 1, &rs, NULL, NULL, NULL, NULL) == 1 && FD_ISSET(tfd, &rs));
        break;
      }
      case 6: {
        struct timespec until;
        CHECK(clock_gettime(CLOCK_MONOTONIC, &until) == 0);
        until.tv_sec += 1;
        until.tv_nsec += 200000000L;
        if (until.tv_nsec >= 1000000000L) {
          until.tv_nsec -= 1000000000L;
          until.tv_sec += 1;
        }
        CHECK(clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == 0);
        break;
      }
      case 7: CHECK(usleep(1200000) == 0); break;
      case 8: CHECK(sleep(1) == 0); break;
      case 9: {
        fd_set rs;
        FD_ZERO(&rs);
        FD_SET(tfd, &rs);
        CHECK(select(tfd + 1, &rs, NULL, NULL, NULL) == 1 && FD_ISSET(tfd, &rs));
        break;
      }
      case 10: {
        struct timeval tv = {1, 200000};
        CHECK(select(0, NULL, NULL, NULL, &tv) == 0);
        CHECKF(tv.tv_sec == 0 && tv.tv_usec == 0, "select(1.2 s) left %ld.%06ld s in its timeout",
               (long)tv.tv_sec, (long)tv.tv_usec);
        break;
      }
    }
    spent = nt_now_s() - t0;
    CHECKF(spent >= (which == 3 ? 0.79 : which == 8 ? 0.99 : 1.19), "%s returned after %.3f s",
           long_names[which], spent);
    uint64_t expirations;
    if (which != 3 && which != 8) CHECK(read(tfd, &expirations, sizeof expirations) == sizeof expirations);
    rss = nt_rss_bytes();
    if (!NT_AGAINST_GLIBC)
      CHECKF(rss + NT_MIB(24) <= rss_full,
             "RSS %zu MiB after one %s with 32 MiB freed just before, %zu MiB before (bound: 24 "
             "MiB less)", rss >> 20, long_names[which], rss_full >> 20);
    verify_kept();
  }
  close(tfd);

  /* Interrupted: the time left of the whole sleep. */
  fill_and_free_most(30000000);
  struct sigaction sa = {0};
  sa.sa_handler = on_alarm;
  CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
  struct itimerval alarm_at = {{0, 0}, {0, 700000}};
  CHECK(setitimer(ITIMER_REAL, &alarm_at, NULL) == 0);
  struct timespec req = {1, 200000000}, left = {0, 0};
  CHECK(nanosleep(&req, &left) == -1 && errno == EINTR);
  double left_s = (double)left.tv_sec + (double)left.tv_nsec * 1e-9;
  CHECKF(left_s > 0.35 && left_s < 0.65, "nanosleep(1.2 s) interrupted at 0.7 s reported %.3f s left", left_s);

  /* Signals during split waits. */
  main_thread = pthread_self();
  struct sigaction su = {0};
  su.sa_handler = on_usr1;
  CHECK(sigaction(SIGUSR1, &su, NULL) == 0);
  for (int which = 0; which < 4; which++) signal_round(which);

  for (int i = 0; i < NBLOCKS; i += KEEP_EVERY) free(blocks[i]);
  close(epfd);
  if (NT_AGAINST_GLIBC) return 0;
  setenv("NEBULA_MEM_WAIT_HOOKS", "0", 1);
  char *again[] = {argv[0], "hooks-off", NULL};
  execv("/proc/self/exe", again);
  CHECKF(0, "execv /proc/self/exe failed");
  return 1;
}
