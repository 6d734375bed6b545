// Self-checking C simulation testbench of hetadam_adam over the golden vectors.
//
// Usage: hetadam_adam_tb FILE.vec...   (python -m hetadam.numerics.golden DIR writes them)
//
// Each step of each case runs the kernel on the recorded inputs and compares
// p, ms, ex and sat_count with the golden model's outputs, word for word.
// Prints one line per case and a summary; exits non-zero on any mismatch
// (Vitis HLS csim_design and cosim_design read the exit status the same way).
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "hetadam_adam.h"

namespace {

constexpr int N_SCALARS = 12;  // regmap.SCALARS: n idx0 seed beta1 beta2 eps_m eps_e alpha_m alpha_sh ratio_max lwd mode

struct Step {
  int64_t scalars[N_SCALARS] = {};
  std::vector<uint32_t> p, g, ms, ex, expect_p, expect_ms, expect_ex;
  uint32_t expect_sat = 0;
};

struct Case {
  std::string name;
  uint32_t n = 0, idx0 = 0;
  std::vector<Step> steps;
};

std::vector<uint32_t> hex_words(std::istringstream &in) {
  std::vector<uint32_t> words;
  std::string token;
  while (in >> token) words.push_back(static_cast<uint32_t>(std::strtoul(token.c_str(), nullptr, 16)));
  return words;
}

bool read_case(const char *path, Case &c) {
  std::ifstream file(path);
  if (!file) {
    std::fprintf(stderr, "cannot open %s\n", path);
    return false;
  }
  Step step;
  std::string line;
  while (std::getline(file, line)) {
    std::istringstream in(line);
    std::string key;
    in >> key;
    if (key == "case") {
      in >> c.name;
    } else if (key == "n") {
      in >> c.n;
    } else if (key == "idx0") {
      in >> c.idx0;
    } else if (key == "scalars") {
      for (int64_t &v : step.scalars) in >> v;
    } else if (key == "p") {
      step.p = hex_words(in);
    } else if (key == "g") {
      step.g = hex_words(in);
    } else if (key == "ms") {
      step.ms = hex_words(in);
    } else if (key == "ex") {
      step.ex = hex_words(in);
    } else if (key == "expect_p") {
      step.expect_p = hex_words(in);
    } else if (key == "expect_ms") {
      step.expect_ms = hex_words(in);
    } else if (key == "expect_ex") {
      step.expect_ex = hex_words(in);
    } else if (key == "expect_sat") {
      in >> step.expect_sat;
      c.steps.push_back(step);
      step = Step();
    }
  }
  if (c.name.empty() || c.steps.empty()) {
    std::fprintf(stderr, "%s holds no golden case\n", path);
    return false;
  }
  return true;
}

// Compares the first `count` words; prints the first few differences.
int compare(const Case &c, size_t k, const char *what, const uint32_t *got, const std::vector<uint32_t> &want,
            size_t count) {
  int bad = 0;
  for (size_t i = 0; i < count; ++i) {
    if (got[i] != want[i]) {
      if (bad < 4)
        std::printf("  %s step %zu: %s[%zu] = %08" PRIx32 ", expected %08" PRIx32 "\n", c.name.c_str(), k + 1, what,
                    i, got[i], want[i]);
      ++bad;
    }
  }
  return bad;
}

// Runs every step of a case; returns the number of mismatching words.
int run_case(const Case &c, size_t &elements) {
  const size_t n = c.n, nb = (n + hetadam::BLOCK - 1) / hetadam::BLOCK;
  // At least the co-simulation depth: co-simulation transfers `depth` words of every array.
  std::vector<int32_t> p(std::max<size_t>(n, hetadam::COSIM_DEPTH));
  std::vector<int16_t> g(p.size());
  std::vector<uint32_t> ms(p.size()), ex(std::max<size_t>(nb, hetadam::COSIM_DEPTH_BLOCKS));
  int bad = 0;
  for (size_t k = 0; k < c.steps.size(); ++k) {
    const Step &s = c.steps[k];
    if (s.p.size() != n || s.g.size() != n || s.ms.size() != n || s.ex.size() != nb) {
      std::printf("  %s step %zu: array sizes do not match n=%zu\n", c.name.c_str(), k + 1, n);
      return bad + 1;
    }
    for (size_t i = 0; i < n; ++i) {
      p[i] = static_cast<int32_t>(s.p[i]);
      g[i] = static_cast<int16_t>(s.g[i]);
      ms[i] = s.ms[i];
    }
    std::copy(s.ex.begin(), s.ex.end(), ex.begin());
    const int64_t *r = s.scalars;
    uint32_t sat = 0xFFFFFFFFu;
    hetadam_adam(static_cast<uint32_t>(r[0]), static_cast<uint32_t>(r[1]), static_cast<uint32_t>(r[2]),
                 static_cast<uint32_t>(r[3]), static_cast<uint32_t>(r[4]), static_cast<uint32_t>(r[5]),
                 static_cast<int32_t>(r[6]), static_cast<uint32_t>(r[7]), static_cast<uint32_t>(r[8]),
                 static_cast<uint32_t>(r[9]), static_cast<uint32_t>(r[10]), static_cast<uint32_t>(r[11]), &sat,
                 p.data(), g.data(), ms.data(), ex.data());
    bad += compare(c, k, "p", reinterpret_cast<const uint32_t *>(p.data()), s.expect_p, n);
    bad += compare(c, k, "ms", ms.data(), s.expect_ms, n);
    bad += compare(c, k, "ex", ex.data(), s.expect_ex, nb);
    if (sat != s.expect_sat) {
      std::printf("  %s step %zu: sat_count = %" PRIu32 ", expected %" PRIu32 "\n", c.name.c_str(), k + 1, sat,
                  s.expect_sat);
      ++bad;
    }
    elements += n;
  }
  return bad;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE.vec...\n", argv[0]);
    return 2;
  }
  int cases = 0, failed = 0;
  size_t steps = 0, elements = 0;
  long mismatches = 0;
  for (int a = 1; a < argc; ++a) {
    Case c;
    if (!read_case(argv[a], c)) return 2;
    const int bad = run_case(c, elements);
    std::printf("%-22s %3zu step(s) n=%-5u %s\n", c.name.c_str(), c.steps.size(), c.n, bad ? "FAIL" : "ok");
    ++cases;
    steps += c.steps.size();
    mismatches += bad;
    failed += bad ? 1 : 0;
  }
  std::printf("hetadam_adam csim: %d case(s), %zu step(s), %zu element updates, %ld mismatching word(s): %s\n", cases,
              steps, elements, mismatches, failed ? "FAIL" : "PASS");
  return failed ? 1 : 0;
}
