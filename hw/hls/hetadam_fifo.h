// A FIFO between the dataflow processes of the kernel.
//
// Synthesis maps it to hls::stream (a hardware FIFO whose depth is set by
// `#pragma HLS STREAM`). Everywhere else (g++/clang, Vitis HLS C simulation)
// it is a growable queue: C simulation runs the dataflow processes one after
// the other, so a FIFO must hold everything its producer writes in one call.
#pragma once

#ifdef __SYNTHESIS__
#include <hls_stream.h>

namespace hetadam {
template <typename T>
using fifo = hls::stream<T>;
}  // namespace hetadam

#else
#include <cassert>
#include <cstddef>
#include <vector>

namespace hetadam {
template <typename T>
class fifo {
 public:
  void write(const T &value) { buf_.push_back(value); }

  T read() {
    assert(head_ < buf_.size() && "read from an empty fifo");
    T value = buf_[head_++];
    if (head_ == buf_.size()) {
      buf_.clear();
      head_ = 0;
    }
    return value;
  }

  bool empty() const { return head_ == buf_.size(); }

 private:
  std::vector<T> buf_;
  std::size_t head_ = 0;
};
}  // namespace hetadam
#endif
