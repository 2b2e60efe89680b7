// Under NEBULA_MEM_BUDGET=32M: operator new calls the new-handler before it throws
// std::bad_alloc; nothrow new returns nullptr; a new-handler that releases a reserve makes the
// retry succeed; an RAII pressure subscription sees the levels and stops at its destruction.
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "budget_check.h"
#include "nebula/mem.hpp"

static int g_handler_calls = 0;
static void* g_reserve = nullptr;

static void counting_handler() {
  ++g_handler_calls;
  std::set_new_handler(nullptr);  // the next failure throws
}

static void releasing_handler() {
  ++g_handler_calls;
  if (g_reserve != nullptr) {
    ::operator delete(g_reserve);
    g_reserve = nullptr;
  } else {
    std::set_new_handler(nullptr);
  }
}

int main() {
  CHECK(nebula::mem::is_active());
  CHECK(nebula::mem::budget() == (32u << 20));
  std::vector<nebula::mem::PressureEvent> seen;
  seen.reserve(64);
  {
    auto sub = nebula::mem::on_pressure([&](const nebula::mem::PressureEvent& e) { seen.push_back(e); });
    CHECK(static_cast<bool>(sub));
    // 1. bad_alloc after the handler ran once
    std::set_new_handler(counting_handler);
    bool threw = false;
    try {
      void* p = ::operator new(64u << 20);
      (void)p;
    } catch (const std::bad_alloc&) {
      threw = true;
    }
    CHECK(threw);
    CHECK(g_handler_calls == 1);
    // 2. nothrow: nullptr, no exception
    void* q = ::operator new(64u << 20, std::nothrow);
    CHECK(q == nullptr);
    void* qa = ::operator new[](64u << 20, std::align_val_t{4096}, std::nothrow);
    CHECK(qa == nullptr);
    // 3. a handler that frees a reserve lets the allocation succeed
    g_reserve = ::operator new(24u << 20);
    std::memset(g_reserve, 1, 20u << 20);
    g_handler_calls = 0;
    std::set_new_handler(releasing_handler);
    void* big = ::operator new(24u << 20);
    CHECK(big != nullptr);
    CHECK(g_handler_calls == 1);
    std::memset(big, 2, 20u << 20);
    ::operator delete(big);
    std::set_new_handler(nullptr);
  }
  // The subscription saw the reserve cross the low level (75% of the budget) and the failures.
  bool low = false, critical = false;
  for (const auto& e : seen) {
    if (e.level == nebula::mem::Pressure::kLow) low = true;
    if (e.level == nebula::mem::Pressure::kCritical) {
      critical = true;
      CHECK(e.requested >= (24u << 20));
    }
    CHECK(e.budget == (32u << 20));
  }
  CHECK(low && critical);
  // After the subscription is gone, nothing more is recorded.
  size_t before = seen.size();
  void* again = ::operator new(64u << 20, std::nothrow);
  CHECK(again == nullptr);
  CHECK(seen.size() == before);
  std::printf("cxx_test: ok (new-handler then bad_alloc, nothrow nullptr, handler-freed retry, %zu events)\n", seen.size());
  return 0;
}
