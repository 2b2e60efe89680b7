// core/budget.hpp: the process memory budget and the pressure callbacks.
//
// The budget bounds the bytes the allocator holds from the OS that may be resident
// ("committed": dirty slices of segments and chunks, huge blocks). Every place that makes memory
// committed first charges the budget (budget_charge), which fails instead of going over: the
// check is one atomic compare-and-swap on the slow path, never on the malloc/free fast path.
// Purges give the bytes back (budget_release).
//
// Pressure levels: low, medium, high at configurable percentages of the budget, and critical
// when an allocation is about to fail. Crossing a level (up, or down with a 2-point hysteresis)
// is noticed where the count changes and reported later, at a safe point of the allocating or
// freeing thread (budget_poll), when the heap is consistent and no allocator lock is held: the
// callbacks may allocate and free.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "nebula/mem.h"

namespace nebula {

struct BudgetState {
  std::atomic<uint64_t> limit{0};          // bytes; 0 = no budget
  std::atomic<bool> active{false};         // limit != 0 or a callback is registered
  std::atomic<bool> poll_needed{false};    // the level may have changed: run budget_poll
  std::atomic<int> reported{0};            // last level told to the callbacks
  std::atomic<uint64_t> crossings[5];      // upward crossings per level
  std::atomic<uint64_t> failures{0};       // allocations refused at the budget
  std::atomic<uint64_t> peak{0};           // highest committed while a budget was set
};
extern BudgetState g_budget;

void budget_init() noexcept;                       // resolve NEBULA_MEM_BUDGET (once)
bool budget_charge(size_t bytes) noexcept;         // false: it would exceed the budget
void budget_release(size_t bytes) noexcept;        // memory given back (purge, unmap)

// At a safe point: report level changes to the callbacks.
inline void budget_poll_if_needed() noexcept {
  extern void budget_poll() noexcept;
  if (__builtin_expect(g_budget.poll_needed.load(std::memory_order_relaxed), 0)) budget_poll();
}
// An allocation of `requested` bytes failed: tell the callbacks (level critical), synchronously.
void budget_critical(size_t requested) noexcept;
// The one-line message of NEBULA_MEM_ON_OOM=abort.
[[noreturn]] void budget_abort(size_t requested) noexcept;

int budget_level() noexcept;
bool budget_in_callback() noexcept;                // this thread is running a pressure callback
uint64_t cgroup_limit(const char* proc_self_cgroup, const char* cgroup_root, bool* found) noexcept;

}  // namespace nebula
