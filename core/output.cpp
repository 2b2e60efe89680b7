// core/output.cpp: text output without allocating, and the fatal-error path.
#include <cstring>

#include "core/base.hpp"
#include "platform/os.hpp"

#if defined(NEBULA_HAVE_LIBUNWIND)
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#endif

namespace nebula {

__thread unsigned t_locks_held = 0;

Message& Message::ch(char c) noexcept {
  if (len_ < sizeof buf_) buf_[len_++] = c;
  return *this;
}

Message& Message::str(const char* s) noexcept {
  while (*s) ch(*s++);
  return *this;
}

Message& Message::num(uint64_t v) noexcept {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) ch(tmp[--n]);
  return *this;
}

Message& Message::hex(uintptr_t v) noexcept {
  str("0x");
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v != 0);
  while (n > 0) ch(tmp[--n]);
  return *this;
}

Message& Message::bytes(uint64_t v) noexcept {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  unsigned u = 0;
  uint64_t scaled10 = v * 10;  // one decimal
  uint64_t base = 1;
  while (u < 4 && v >= base * 1024) {
    base *= 1024;
    ++u;
  }
  if (u == 0) return num(v).ch(' ').str(kUnits[0]);
  scaled10 = (v * 10 + base / 2) / base;
  num(scaled10 / 10).ch('.').num(scaled10 % 10).ch(' ').str(kUnits[u]);
  return *this;
}

void Message::emit() noexcept { os::write_stderr(buf_, len_); }

namespace {
#if defined(NEBULA_HAVE_LIBUNWIND)
// libunwind is loaded only when a backtrace is printed: as a dependency it would map libunwind
// and liblzma into every program (about 110 KiB resident). The names are libunwind's own
// (its header maps unw_* to architecture-specific symbols).
#define NEBULA_STR2(x) #x
#define NEBULA_STR(x) NEBULA_STR2(x)
template <typename F>
F unwinder(const char* name) {
  void* f = os::library_symbol("libunwind.so.8", name);
  return reinterpret_cast<F>(f);
}
#endif

void backtrace() noexcept {
#if defined(NEBULA_HAVE_LIBUNWIND)
  if (t_locks_held != 0) {  // dlopen allocates: not with an engine lock held
    Message().str("  (no backtrace: the error was found inside the allocator)\n").emit();
    return;
  }
  auto getcontext = unwinder<decltype(&unw_tdep_getcontext)>(NEBULA_STR(unw_tdep_getcontext));
  auto init_local = unwinder<decltype(&unw_init_local)>(NEBULA_STR(unw_init_local));
  auto step = unwinder<decltype(&unw_step)>(NEBULA_STR(unw_step));
  auto get_reg = unwinder<decltype(&unw_get_reg)>(NEBULA_STR(unw_get_reg));
  auto get_proc_name = unwinder<decltype(&unw_get_proc_name)>(NEBULA_STR(unw_get_proc_name));
  if (!getcontext || !init_local || !step || !get_reg || !get_proc_name) return;
  unw_context_t ctx;
  unw_cursor_t cur;
  if (getcontext(&ctx) != 0 || init_local(&cur, &ctx) != 0) return;
  int depth = 0;
  while (step(&cur) > 0 && depth < 32) {
    unw_word_t ip = 0, off = 0;
    get_reg(&cur, UNW_REG_IP, &ip);
    char name[128];
    Message m;
    m.str("  #").num(static_cast<uint64_t>(depth++)).ch(' ').hex(ip);
    if (get_proc_name(&cur, name, sizeof name, &off) == 0) m.ch(' ').str(name).str("+").hex(off);
    m.ch('\n').emit();
  }
#endif
}
}  // namespace

void fatal_pointer(const char* op, const void* p, const char* what) noexcept {
  Message m;
  m.str("nebula-memory: ").str(op).str("(").hex(reinterpret_cast<uintptr_t>(p)).str("): ").str(what).ch('\n');
  m.emit();
  backtrace();
  os::abort_process();
}

void fatal(const char* what) noexcept {
  Message m;
  m.str("nebula-memory: fatal: ").str(what).ch('\n');
  m.emit();
  backtrace();
  os::abort_process();
}

}  // namespace nebula
