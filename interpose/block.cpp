// interpose/block.cpp: the calls in which a thread blocks until an event or a time, wrapped so
// that the free memory whose purge time has come goes back first (core: heap_before_block), and
// the semaphore waits, which get what the condition-variable waits get (heap_before_cond_wait).
// An event loop blocked in epoll_wait, or a worker in nanosleep between polls, calls no slow
// path of the allocator, where its maintenance runs. glibc only, as interpose/pthread.cpp.
//
// - A call with a zero timeout (a poll that does not block) is passed straight on.
// - The real functions are looked up when the library is loaded, not at their first call:
//   poll, select, nanosleep and the like may be called from a signal handler, where dlsym, which
//   allocates, may not run. heap_before_block is safe there (see core/heap.cpp).
// - Each wrapper is a cancellation point as the real function is: nothing here is noexcept.
// - Calls that libc makes to these internally (sleep to nanosleep, usleep to nanosleep) never
//   reach the wrappers, so each entry point is wrapped on its own.
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include "interpose/export.hpp"
#include "platform/os.hpp"

using namespace nebula;

namespace {

// One slot per wrapped function, filled by resolve_all (the library's constructor) and, should a
// call come first (a constructor of a library loaded before ours), at that call.
template <class Fn>
struct Real {
  const char* name;
  std::atomic<Fn> fn{nullptr};
  Fn get() noexcept { return os::next_symbol_cached(fn, name); }
};

Real<int (*)(int, epoll_event*, int, int)> r_epoll_wait{"epoll_wait"};
Real<int (*)(int, epoll_event*, int, int, const sigset_t*)> r_epoll_pwait{"epoll_pwait"};
Real<int (*)(int, epoll_event*, int, const timespec*, const sigset_t*)> r_epoll_pwait2{"epoll_pwait2"};
Real<int (*)(pollfd*, nfds_t, int)> r_poll{"poll"};
Real<int (*)(pollfd*, nfds_t, int, size_t)> r_poll_chk{"__poll_chk"};
Real<int (*)(pollfd*, nfds_t, const timespec*, const sigset_t*)> r_ppoll{"ppoll"};
Real<int (*)(pollfd*, nfds_t, const timespec*, const sigset_t*, size_t)> r_ppoll_chk{"__ppoll_chk"};
Real<int (*)(int, fd_set*, fd_set*, fd_set*, timeval*)> r_select{"select"};
Real<int (*)(int, fd_set*, fd_set*, fd_set*, const timespec*, const sigset_t*)> r_pselect{"pselect"};
Real<int (*)(const timespec*, timespec*)> r_nanosleep{"nanosleep"};
Real<int (*)(clockid_t, int, const timespec*, timespec*)> r_clock_nanosleep{"clock_nanosleep"};
Real<unsigned (*)(unsigned)> r_sleep{"sleep"};
Real<int (*)(useconds_t)> r_usleep{"usleep"};
Real<int (*)(sem_t*)> r_sem_wait{"sem_wait"};
Real<int (*)(sem_t*, const timespec*)> r_sem_timedwait{"sem_timedwait"};
Real<int (*)(sem_t*, clockid_t, const timespec*)> r_sem_clockwait{"sem_clockwait"};

__attribute__((constructor)) void resolve_all() {
  r_epoll_wait.get();
  r_epoll_pwait.get();
  r_epoll_pwait2.get();
  r_poll.get();
  r_poll_chk.get();
  r_ppoll.get();
  r_ppoll_chk.get();
  r_select.get();
  r_pselect.get();
  r_nanosleep.get();
  r_clock_nanosleep.get();
  r_sleep.get();
  r_usleep.get();
  r_sem_wait.get();
  r_sem_timedwait.get();
  r_sem_clockwait.get();
}

// A missing function (an older libc without epoll_pwait2 or sem_clockwait) fails as it would
// there: -1 with ENOSYS.
int missing() noexcept {
  errno = ENOSYS;
  return -1;
}

bool blocks(const timespec* t) noexcept { return t == nullptr || t->tv_sec != 0 || t->tv_nsec != 0; }
bool blocks(const timeval* t) noexcept { return t == nullptr || t->tv_sec != 0 || t->tv_usec != 0; }

// A wait of `timeout` ms (-1: no limit) that outlasts the moment more free memory is due to be
// purged becomes two or more: the real call until then, the purge, then the rest. An event or a
// signal ends it as the one call would (the first non-zero result is returned); zero is returned
// only once the whole timeout has passed. `call(ms)` is the real function with that timeout.
template <class Call>
int wait_split(int timeout, Call call) {
  for (;;) {
    const int pending = heap_before_block();
    if (pending < 0 || (timeout >= 0 && timeout <= pending)) return call(timeout);
    const uint64_t start = os::clock_ms();
    const int r = call(pending);
    if (r != 0) return r;
    if (timeout > 0) {
      const uint64_t spent = os::clock_ms() - start;
      if (spent >= static_cast<uint64_t>(timeout)) return 0;
      timeout -= static_cast<int>(spent);
    }
  }
}

// The same for a timeout given as a timespec (nullptr: no limit). A timeout the real function
// would refuse, or one of over a year, goes to it whole. `call(t)` is the real function.
template <class Call>
int wait_split_ts(const timespec* timeout, Call call) {
  constexpr int64_t kNs = 1000000000;
  if (timeout != nullptr && (timeout->tv_nsec < 0 || timeout->tv_nsec >= kNs || timeout->tv_sec < 0 ||
                             timeout->tv_sec > 366 * 86400))
    return call(timeout);
  int64_t left = timeout == nullptr ? -1 : timeout->tv_sec * kNs + timeout->tv_nsec;
  bool split = false;
  for (;;) {
    const int pending = heap_before_block();
    if (pending < 0 || (left >= 0 && left <= pending * int64_t{1000000})) {
      if (!split || left < 0) return call(left < 0 ? nullptr : timeout);
      const timespec rest = {left / kNs, left % kNs};
      return call(&rest);
    }
    const timespec part = {pending / 1000, (pending % 1000) * 1000000L};
    const uint64_t start = os::clock_ms();
    const int r = call(&part);
    if (r != 0) return r;
    split = true;
    if (left > 0) {
      const int64_t spent = static_cast<int64_t>(os::clock_ms() - start) * 1000000;
      if (spent >= left) return 0;
      left -= spent;
    }
  }
}

}  // namespace

NEBULA_API int epoll_wait(int epfd, epoll_event* events, int max, int timeout) {
  auto fn = r_epoll_wait.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(epfd, events, max, timeout);
  return wait_split(timeout, [&](int ms) { return fn(epfd, events, max, ms); });
}

NEBULA_API int epoll_pwait(int epfd, epoll_event* events, int max, int timeout, const sigset_t* mask) {
  auto fn = r_epoll_pwait.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(epfd, events, max, timeout, mask);
  return wait_split(timeout, [&](int ms) { return fn(epfd, events, max, ms, mask); });
}

NEBULA_API int epoll_pwait2(int epfd, epoll_event* events, int max, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_epoll_pwait2.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(epfd, events, max, timeout, mask);
  return wait_split_ts(timeout, [&](const timespec* t) { return fn(epfd, events, max, t, mask); });
}

NEBULA_API int poll(pollfd* fds, nfds_t n, int timeout) {
  auto fn = r_poll.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(fds, n, timeout);
  return wait_split(timeout, [&](int ms) { return fn(fds, n, ms); });
}

// _FORTIFY_SOURCE's poll and ppoll, where the compiler knows the array's size.
NEBULA_API int __poll_chk(pollfd* fds, nfds_t n, int timeout, size_t fds_len) {
  auto fn = r_poll_chk.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(fds, n, timeout, fds_len);
  return wait_split(timeout, [&](int ms) { return fn(fds, n, ms, fds_len); });
}

NEBULA_API int ppoll(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_ppoll.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(fds, n, timeout, mask);
  return wait_split_ts(timeout, [&](const timespec* t) { return fn(fds, n, t, mask); });
}

NEBULA_API int __ppoll_chk(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask, size_t fds_len) {
  auto fn = r_ppoll_chk.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(fds, n, timeout, mask, fds_len);
  return wait_split_ts(timeout, [&](const timespec* t) { return fn(fds, n, t, mask, fds_len); });
}

NEBULA_API int select(int n, fd_set* r, fd_set* w, fd_set* e, timeval* timeout) {
  auto fn = r_select.get();
  if (fn == nullptr) return missing();
  if (blocks(timeout)) heap_before_block();
  return fn(n, r, w, e, timeout);
}

NEBULA_API int pselect(int n, fd_set* r, fd_set* w, fd_set* e, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_pselect.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(n, r, w, e, timeout, mask);
  // A wait that times out clears the sets: each part starts from the caller's.
  fd_set sets[3];
  fd_set* given[3] = {r, w, e};
  for (int i = 0; i < 3; ++i)
    if (given[i] != nullptr) sets[i] = *given[i];
  bool first = true;
  return wait_split_ts(timeout, [&](const timespec* t) {
    if (!first)
      for (int i = 0; i < 3; ++i)
        if (given[i] != nullptr) *given[i] = sets[i];
    first = false;
    return fn(n, r, w, e, t, mask);
  });
}

// Split as wait_split does: a long sleep (sleep_for of a minute between batches) purges what falls
// due during it. Interrupted, it reports the time left of the whole sleep.
NEBULA_API int nanosleep(const timespec* req, timespec* rem) {
  auto fn = r_nanosleep.get();
  if (fn == nullptr) return missing();
  if (req == nullptr || !blocks(req) || req->tv_nsec < 0 || req->tv_nsec >= 1000000000L || req->tv_sec < 0)
    return fn(req, rem);
  timespec left = *req;
  for (;;) {
    const int pending = heap_before_block();
    if (pending < 0 || left.tv_sec > INT32_MAX / 1000 || left.tv_sec * 1000 + left.tv_nsec / 1000000 <= pending)
      return fn(&left, rem);
    const timespec part = {pending / 1000, (pending % 1000) * 1000000L};
    timespec part_rem = {0, 0};
    const int r = fn(&part, &part_rem);
    left.tv_sec -= part.tv_sec;
    left.tv_nsec -= part.tv_nsec;
    if (left.tv_nsec < 0) {
      left.tv_nsec += 1000000000L;
      left.tv_sec -= 1;
    }
    if (r != 0) {
      if (rem != nullptr && errno == EINTR) {
        left.tv_sec += part_rem.tv_sec;
        left.tv_nsec += part_rem.tv_nsec;
        if (left.tv_nsec >= 1000000000L) {
          left.tv_nsec -= 1000000000L;
          left.tv_sec += 1;
        }
        *rem = left;
      }
      return r;
    }
  }
}

NEBULA_API int clock_nanosleep(clockid_t clock, int flags, const timespec* req, timespec* rem) {
  auto fn = r_clock_nanosleep.get();
  if (fn == nullptr) return ENOSYS;  // (returns the error, as the real one does)
  if (req != nullptr && (flags != 0 || blocks(req))) heap_before_block();
  return fn(clock, flags, req, rem);
}

NEBULA_API unsigned sleep(unsigned seconds) {
  auto fn = r_sleep.get();
  if (fn == nullptr) return seconds;
  if (seconds != 0) heap_before_block();
  return fn(seconds);
}

NEBULA_API int usleep(useconds_t usec) {
  auto fn = r_usleep.get();
  if (fn == nullptr) return missing();
  if (usec != 0) heap_before_block();
  return fn(usec);
}

// A pool whose workers wait on a semaphore for their next job: as a condition variable's.
NEBULA_API int sem_wait(sem_t* sem) {
  auto fn = r_sem_wait.get();
  if (fn == nullptr) return missing();
  heap_before_cond_wait();
  return fn(sem);
}

NEBULA_API int sem_timedwait(sem_t* sem, const timespec* abstime) {
  auto fn = r_sem_timedwait.get();
  if (fn == nullptr) return missing();
  heap_before_cond_wait();
  return fn(sem, abstime);
}

NEBULA_API int sem_clockwait(sem_t* sem, clockid_t clock, const timespec* abstime) {
  auto fn = r_sem_clockwait.get();
  if (fn == nullptr) return missing();
  heap_before_cond_wait();
  return fn(sem, clock, abstime);
}
