// interpose/export.hpp: how interpose/ exports symbols. Every exported function is one line
// that forwards to core/; validation, errno and overflow checks live in core.
#pragma once

#include "core/engine.hpp"

#define NEBULA_API extern "C" __attribute__((visibility("default")))
// Another name for a function defined in the same file: no extra jump.
#define NEBULA_ALIAS(target) __attribute__((alias(#target), visibility("default")))
