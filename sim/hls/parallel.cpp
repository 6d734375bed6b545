// hetadam_adam_parallel: the HLS kernel (hw/hls/hetadam_adam.cpp) over n elements on
// several threads, for the hls-csim backend (host/hetadam/backends/hls_csim.py), which
// calls it once a step through ctypes.
//
// The range is cut into pieces of `chunk` elements (a multiple of the block), each one
// run of the kernel with idx0 advanced to the piece's first element. A run's result
// depends only on its own elements, their blocks' exponent words and their global index
// (the stochastic-rounding LFSR), so the pieces together give what one run over the whole
// range gives, bit for bit. Threads take the next piece as they finish one. Pieces stay
// small: the C simulation's FIFOs (std::vector, allocated per run) then stay in the cache
// and off the page allocator; with 64Ki-element pieces page faults took ~40% of the time.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

#include "hetadam_adam.h"

extern "C" uint32_t hetadam_adam_parallel(uint32_t n, uint32_t idx0, uint32_t seed, uint32_t beta1, uint32_t beta2,
                                          uint32_t eps_m, int32_t eps_e, uint32_t alpha_m, uint32_t alpha_sh,
                                          uint32_t ratio_max, uint32_t lwd, uint32_t mode, int32_t *p,
                                          const int16_t *g, uint32_t *ms, uint32_t *ex, uint32_t chunk,
                                          uint32_t threads) {
  chunk = std::max<uint32_t>(chunk / hetadam::BLOCK, 1) * hetadam::BLOCK;
  const uint32_t pieces = n / chunk + (n % chunk != 0);
  std::atomic<uint32_t> next{0};
  std::atomic<uint32_t> saturated{0};
  auto work = [&] {
    uint32_t sat = 0;
    for (uint32_t k; (k = next.fetch_add(1)) < pieces;) {
      const uint32_t lo = k * chunk;
      uint32_t piece_sat = 0;
      hetadam_adam(std::min(chunk, n - lo), idx0 + lo, seed, beta1, beta2, eps_m, eps_e, alpha_m, alpha_sh,
                   ratio_max, lwd, mode, &piece_sat, p + lo, g + lo, ms + lo, ex + lo / hetadam::BLOCK);
      sat += piece_sat;
    }
    saturated += sat;
  };
  std::vector<std::thread> pool;
  for (uint32_t t = 1; t < std::min(threads, pieces); ++t) {
    try {
      pool.emplace_back(work);
    } catch (const std::system_error &) {  // no more threads to be had: the others take the pieces
      break;
    }
  }
  work();
  for (auto &thread : pool) thread.join();
  return saturated;
}
