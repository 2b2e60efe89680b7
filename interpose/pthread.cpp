// interpose/pthread.cpp: pthread_join, wrapped so that a thread about to wait for another one
// first returns its free memory (core: heap_before_wait). glibc only: the real function is the
// next definition in the lookup order (libc.so.6 since glibc 2.34, libpthread before).
#include <atomic>
#include <cerrno>
#include <pthread.h>

#include "interpose/export.hpp"
#include "platform/os.hpp"

using namespace nebula;

namespace {
using JoinFn = int (*)(pthread_t, void**);
std::atomic<JoinFn> g_real_join{nullptr};
}  // namespace

NEBULA_API int pthread_join(pthread_t thread, void** result) {
  JoinFn join = g_real_join.load(std::memory_order_acquire);
  if (join == nullptr) {
    join = reinterpret_cast<JoinFn>(os::next_symbol("pthread_join"));
    if (join == nullptr) return ENOSYS;  // no pthread library after us: cannot happen with glibc
    g_real_join.store(join, std::memory_order_release);
  }
  heap_before_wait();
  return join(thread, result);
}
