// tests/unit/main.cpp: the doctest runner of the engine's unit tests.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "core/engine.hpp"

int main(int argc, char** argv) {
  // The tests read and write the default mode's structures (free lists in the clear, holes,
  // class caches): with secure mode on (NEBULA_MEM_SECURE=1, or a build with -Dsecure=true)
  // they would crash rather than fail. Secure mode has its own tests: the stress and fuzz
  // suites run it (`NEBULA_MEM_SECURE=1 ./nebulamem stress`, `./nebulamem test`'s secure_*).
  nebula::engine_init();  // reads the options (no heap is made)
  if (nebula::g_secure) {
    std::fprintf(stderr, "unit_tests: secure mode is on; these tests check the default mode's structures "
                         "(unset NEBULA_MEM_SECURE; secure mode is tested by the stress and fuzz suites)\n");
    return 2;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
