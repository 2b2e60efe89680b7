// examples/pressure_cache.cpp: a cache that empties itself when memory runs short.
//
// Run it under a budget:   ./nebulamem run --budget 64M -- build/examples/pressure-cache
// The cache keeps every decoded "image" it made. Under a 64 MiB budget it would run out after
// about 60 of them; instead, the pressure callback drops half the cache at level high and all
// of it at level critical, and the program decodes 400 images without a failure.
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "nebula/mem.hpp"

namespace {

class ImageCache {
 public:
  // Watch the allocator's pressure for as long as the cache lives.
  ImageCache()
      : sub_(nebula::mem::on_pressure([this](const nebula::mem::PressureEvent& e) { on_pressure(e); })) {}

  const std::vector<unsigned char>& get(int id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = images_.find(id);
    if (it != images_.end()) return *it->second;
    auto img = std::make_unique<std::vector<unsigned char>>(1u << 20);  // "decode": 1 MiB
    std::memset(img->data(), id & 0xff, img->size());
    return *images_.emplace(id, std::move(img)).first->second;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return images_.size();
  }
  int drops() const { return drops_; }

 private:
  void on_pressure(const nebula::mem::PressureEvent& e) {
    // The callback runs on the allocating thread: in get(), with mu_ held. A real cache would
    // use a try-lock here; this one is single-threaded, so the lock is ours already.
    if (e.level < nebula::mem::Pressure::kHigh) return;
    size_t keep = e.level == nebula::mem::Pressure::kCritical ? 0 : images_.size() / 2;
    while (images_.size() > keep) images_.erase(images_.begin());
    ++drops_;
  }

  std::mutex mu_;
  std::map<int, std::unique_ptr<std::vector<unsigned char>>> images_;
  int drops_ = 0;
  nebula::mem::Subscription sub_;  // last member: unsubscribed first, before images_ goes
};

}  // namespace

int main() {
  if (!nebula::mem::is_active()) {
    std::fprintf(stderr, "pressure-cache: run me under nebula-memory (./nebulamem run --budget 64M -- ...)\n");
    return 2;
  }
  ImageCache cache;
  unsigned long sum = 0;
  for (int id = 0; id < 400; ++id) sum += cache.get(id)[12345];
  std::printf("decoded 400 images under a %llu MiB budget; the cache emptied itself %d times and holds %zu\n",
              static_cast<unsigned long long>(nebula::mem::budget() >> 20), cache.drops(), cache.size());
  return sum == 0 ? 1 : 0;
}
