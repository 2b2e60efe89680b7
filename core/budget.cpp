// core/budget.cpp: the process memory budget, pressure levels and the callback registry.
#include "core/budget.hpp"

#include "core/engine.hpp"
#include "core/options.hpp"

namespace nebula {

BudgetState g_budget;

namespace {

constexpr unsigned kMaxCallbacks = 64;
constexpr int kHysteresisPercent = 2;

struct Callback {
  std::atomic<uint64_t> handle{0};   // 0: free slot
  nebula_mem_pressure_fn fn = nullptr;
  void* ctx = nullptr;
  std::atomic<int> inflight{0};      // invocations running now
};

NEBULA_SPARSE_BSS_BEGIN
NEBULA_SPARSE_BSS Callback g_callbacks[kMaxCallbacks];  // 2 KiB, read when a pressure event fires
NEBULA_SPARSE_BSS_END
Lock g_callback_lock;
uint64_t g_generation = 0;            // under g_callback_lock
std::atomic<int> g_init{0};           // 0 not yet, 1 in progress, 2 done
__thread int t_in_callback = 0;
__thread uint64_t t_running_handle = 0;

uint64_t threshold(Option o, uint64_t limit, int minus) {
  int64_t pct = option(o) - minus;
  if (pct < 0) pct = 0;
  return limit / 100 * static_cast<uint64_t>(pct) + limit % 100 * static_cast<uint64_t>(pct) / 100;
}

int count_levels(uint64_t c, uint64_t limit, int minus) {
  int n = 0;
  if (c >= threshold(Option::kPressureLow, limit, minus)) ++n;
  if (c >= threshold(Option::kPressureMedium, limit, minus)) ++n;
  if (c >= threshold(Option::kPressureHigh, limit, minus)) ++n;
  return n;
}

// The level for committed bytes c, given the last reported one: up at the thresholds, down only
// below threshold - 2 points (so a program hovering at a threshold is not told every time).
int level_of(uint64_t c, uint64_t limit, int reported) {
  if (limit == 0) return 0;
  int up = count_levels(c, limit, 0);
  if (up > reported) return up;
  int down = count_levels(c, limit, kHysteresisPercent);
  return down < reported ? down : reported;
}

void note_change(uint64_t committed) {
  uint64_t limit = g_budget.limit.load(std::memory_order_relaxed);
  if (limit == 0) return;
  int rep = g_budget.reported.load(std::memory_order_relaxed);
  if (level_of(committed, limit, rep) != rep) g_budget.poll_needed.store(true, std::memory_order_relaxed);
}

// Call every registered callback with ev, without holding the registry lock.
void call_all(const nebula_mem_pressure_event& ev) {
  struct Snap {
    nebula_mem_pressure_fn fn;
    void* ctx;
    uint64_t handle;
    Callback* slot;
  } snap[kMaxCallbacks];
  unsigned n = 0;
  {
    LockGuard guard(g_callback_lock);
    for (auto& c : g_callbacks) {
      uint64_t h = c.handle.load(std::memory_order_relaxed);
      if (h == 0) continue;
      c.inflight.fetch_add(1, std::memory_order_acq_rel);
      snap[n++] = Snap{c.fn, c.ctx, h, &c};
    }
  }
  for (unsigned i = 0; i < n; ++i) {
    uint64_t saved = t_running_handle;
    ++t_in_callback;
    t_running_handle = snap[i].handle;
    // A callback unregistered after the snapshot is skipped.
    if (snap[i].slot->handle.load(std::memory_order_acquire) == snap[i].handle) snap[i].fn(&ev, snap[i].ctx);
    t_running_handle = saved;
    --t_in_callback;
    snap[i].slot->inflight.fetch_sub(1, std::memory_order_acq_rel);
  }
}

nebula_mem_pressure_event make_event(int level, int previous, size_t requested) {
  nebula_mem_pressure_event ev{};
  ev.level = level;
  ev.previous = previous;
  ev.committed = g_counters.committed.load(std::memory_order_relaxed);
  ev.budget = g_budget.limit.load(std::memory_order_relaxed);
  ev.requested = requested;
  return ev;
}

void update_active() {
  bool any = g_budget.limit.load(std::memory_order_relaxed) != 0;
  g_budget.active.store(any, std::memory_order_relaxed);
}

// Read a number at the start of s (decimal); false if none.
bool read_u64(const char* s, uint64_t* out) {
  if (*s < '0' || *s > '9') return false;
  uint64_t v = 0;
  while (*s >= '0' && *s <= '9') {
    uint64_t d = static_cast<uint64_t>(*s++ - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

size_t str_len(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

// Build "root + middle + path + leaf" into buf.
bool join(char* buf, size_t cap, const char* a, const char* b, const char* c, size_t clen, const char* d) {
  size_t n = 0;
  auto put = [&](const char* s, size_t len) {
    for (size_t i = 0; i < len; ++i) {
      if (n + 1 >= cap) return false;
      buf[n++] = s[i];
    }
    return true;
  };
  bool ok = put(a, str_len(a)) && put(b, str_len(b)) && put(c, clen) && put(d, str_len(d));
  buf[n] = 0;
  return ok;
}

// Read a limit file: a number, or "max" (no limit). A v1 "no limit" is a number near 2^63.
bool read_limit_file(const char* path, uint64_t* out) {
  char buf[64];
  long n = os::read_file(path, buf, sizeof buf - 1);
  if (n <= 0) return false;
  buf[n] = 0;
  uint64_t v;
  if (!read_u64(buf, &v)) return false;  // "max"
  if (v >= (uint64_t{1} << 60)) return false;
  *out = v;
  return true;
}

}  // namespace

uint64_t cgroup_limit(const char* proc_self_cgroup, const char* root, bool* found) noexcept {
  *found = false;
  char text[4096];
  long n = os::read_file(proc_self_cgroup, text, sizeof text - 1);
  if (n <= 0) return 0;
  text[n] = 0;
  char path[512];
  uint64_t v = 0;
  // Lines: "hierarchy-id:controllers:path". v2 has one line "0::/path".
  for (char* line = text; *line;) {
    char* eol = line;
    while (*eol && *eol != '\n') ++eol;
    char* c1 = line;
    while (c1 < eol && *c1 != ':') ++c1;
    char* c2 = c1 < eol ? c1 + 1 : eol;
    while (c2 < eol && *c2 != ':') ++c2;
    if (c1 < eol && c2 < eol) {
      const char* ctrl = c1 + 1;
      size_t ctrl_len = static_cast<size_t>(c2 - ctrl);
      const char* cg = c2 + 1;
      size_t cg_len = static_cast<size_t>(eol - cg);
      if (cg_len == 1 && cg[0] == '/') cg_len = 0;
      bool v2 = ctrl_len == 0 && line[0] == '0' && c1 == line + 1;
      bool v1_memory = false;
      for (const char* w = ctrl; w < c2;) {  // "cpu,memory" lists
        const char* e = w;
        while (e < c2 && *e != ',') ++e;
        if (e - w == 6 && w[0] == 'm' && w[1] == 'e' && w[2] == 'm' && w[3] == 'o' && w[4] == 'r' && w[5] == 'y') v1_memory = true;
        w = e + 1;
      }
      if (v2 && join(path, sizeof path, root, "", cg, cg_len, "/memory.max") && read_limit_file(path, &v)) {
        *found = true;
        return v;
      }
      if (v1_memory && join(path, sizeof path, root, "/memory", cg, cg_len, "/memory.limit_in_bytes") &&
          read_limit_file(path, &v)) {
        *found = true;
        return v;
      }
      // In a container the process's cgroup is often the namespace root: try the top.
      if (v2 && join(path, sizeof path, root, "", "", 0, "/memory.max") && read_limit_file(path, &v)) {
        *found = true;
        return v;
      }
      if (v1_memory && join(path, sizeof path, root, "/memory", "", 0, "/memory.limit_in_bytes") &&
          read_limit_file(path, &v)) {
        *found = true;
        return v;
      }
    }
    line = *eol ? eol + 1 : eol;
  }
  return 0;
}

NEBULA_SMALL void budget_init() noexcept {
  int expected = 0;
  if (!g_init.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) return;
  int64_t v = option(Option::kBudget);
  uint64_t limit = 0;
  if (v == kBudgetCgroup) {
    bool found = false;
    limit = cgroup_limit("/proc/self/cgroup", option_text(Option::kCgroupRoot), &found);
    if (!found) {
      Message m;
      m.str("nebula-memory: budget=cgroup: this process's cgroup sets no memory limit; running without a budget\n");
      m.emit();
      limit = 0;
    }
  } else if (v < 0) {
    limit = os::physical_memory() / 100 * static_cast<uint64_t>(-v);
  } else {
    limit = static_cast<uint64_t>(v);
  }
  g_budget.limit.store(limit, std::memory_order_relaxed);
  update_active();
  g_init.store(2, std::memory_order_release);
}

bool budget_charge(size_t bytes) noexcept {
  uint64_t limit = g_budget.limit.load(std::memory_order_relaxed);
  if (limit == 0) {
    committed_add(bytes);
    return true;
  }
  size_t cur = g_counters.committed.load(std::memory_order_relaxed);
  do {
    if (cur + bytes > limit || cur + bytes < cur) return false;
  } while (!g_counters.committed.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  size_t now = cur + bytes;
  size_t peak = g_counters.committed_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_counters.committed_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  uint64_t bp = g_budget.peak.load(std::memory_order_relaxed);
  while (now > bp && !g_budget.peak.compare_exchange_weak(bp, now, std::memory_order_relaxed)) {
  }
  note_change(now);
  return true;
}

void budget_release(size_t bytes) noexcept {
  size_t now = g_counters.committed.fetch_sub(bytes, std::memory_order_relaxed) - bytes;
  note_change(now);
}

void budget_poll() noexcept {
  g_budget.poll_needed.store(false, std::memory_order_relaxed);
  if (t_in_callback > 0) {  // told after the callback returns
    g_budget.poll_needed.store(true, std::memory_order_relaxed);
    return;
  }
  for (;;) {
    uint64_t limit = g_budget.limit.load(std::memory_order_relaxed);
    int rep = g_budget.reported.load(std::memory_order_relaxed);
    int lvl = level_of(g_counters.committed.load(std::memory_order_relaxed), limit, rep);
    if (lvl == rep) return;
    if (!g_budget.reported.compare_exchange_weak(rep, lvl, std::memory_order_acq_rel)) continue;
    // This thread reports the crossing: one call per level crossed, in order.
    if (lvl > rep) {
      for (int l = rep + 1; l <= lvl; ++l) {
        g_budget.crossings[l].fetch_add(1, std::memory_order_relaxed);
        call_all(make_event(l, l - 1, 0));
      }
    } else {
      for (int l = rep - 1; l >= lvl; --l) call_all(make_event(l, l + 1, 0));
    }
  }
}

void budget_critical(size_t requested) noexcept {
  if (t_in_callback > 0) return;  // an allocation inside a callback fails plainly
  g_budget.crossings[NEBULA_MEM_PRESSURE_CRITICAL].fetch_add(1, std::memory_order_relaxed);
  int rep = g_budget.reported.load(std::memory_order_relaxed);
  call_all(make_event(NEBULA_MEM_PRESSURE_CRITICAL, rep, requested));
}

void budget_abort(size_t requested) noexcept {
  Message m;
  m.str("nebula-memory: out of memory: requested ").num(requested).str(" bytes, budget ");
  uint64_t limit = g_budget.limit.load(std::memory_order_relaxed);
  if (limit == 0) m.str("none");
  else m.bytes(limit);
  m.str(", in use ").bytes(g_counters.committed.load(std::memory_order_relaxed)).str(" (NEBULA_MEM_ON_OOM=abort)\n");
  m.emit();
  os::abort_process();
}

bool budget_in_callback() noexcept { return t_in_callback > 0; }

int budget_level() noexcept { return g_budget.reported.load(std::memory_order_relaxed); }

// ---- Registry (C API in interpose/prefixed.cpp) ---------------------------------------------
uint64_t budget_register(nebula_mem_pressure_fn fn, void* ctx) noexcept {
  if (fn == nullptr) return 0;
  engine_init();
  LockGuard guard(g_callback_lock);
  for (unsigned i = 0; i < kMaxCallbacks; ++i) {
    Callback& c = g_callbacks[i];
    if (c.handle.load(std::memory_order_relaxed) != 0) continue;
    c.fn = fn;
    c.ctx = ctx;
    uint64_t h = (++g_generation << 8) | (i + 1);
    c.handle.store(h, std::memory_order_release);
    return h;
  }
  return 0;
}

bool budget_unregister(uint64_t handle) noexcept {
  if (handle == 0) return false;
  unsigned i = static_cast<unsigned>(handle & 0xff) - 1;
  if (i >= kMaxCallbacks) return false;
  Callback& c = g_callbacks[i];
  {
    LockGuard guard(g_callback_lock);
    if (c.handle.load(std::memory_order_relaxed) != handle) return false;
    c.handle.store(0, std::memory_order_release);
  }
  // Wait for invocations running on other threads, so that ctx may be freed on return. A
  // callback that unregisters itself does not wait for itself.
  if (t_running_handle != handle) {
    while (c.inflight.load(std::memory_order_acquire) != 0) os::yield();
  }
  return true;
}

bool budget_set_limit(uint64_t bytes) noexcept {
  engine_init();
  if (bytes > (uint64_t{1} << 50)) return false;
  g_budget.limit.store(bytes, std::memory_order_relaxed);
  update_active();
  note_change(g_counters.committed.load(std::memory_order_relaxed));
  if (bytes == 0 && g_budget.reported.load(std::memory_order_relaxed) != 0) g_budget.poll_needed.store(true);
  budget_poll_if_needed();
  return true;
}

}  // namespace nebula
