// The RTL kernel as a device, in-process: the Verilator model of hetadam_adam
// with the board around it, compiled into one shared library that
// host/hetadam/driver/sim.py loads through ctypes (the engine of the rtl-sim
// backend). No Python runs in the clock loop.
//
//   - an AXI4-Lite master on s_axi_control: the host's register reads and writes
//   - four AXI4 slaves over ONE sparse memory (the DDR the four masters share):
//     INCR bursts of any length and size, WSTRB, up to QUEUE outstanding bursts
//     a direction, B responses
//   - the interrupt line, and a wall-clock deadline on every wait
//
// Every call is atomic: it returns with each AXI transaction it began complete,
// so an interruption between two calls never leaves a bus half-way.
// `hx_poll_control` is a read of the control register that repeats itself in
// simulation (a real bus read every few clocks) while a run is in flight: the
// driver's polling loop, in C. A buffer transfer first lets a run the host
// started and left finish (Device::mem_write).
// `hx_backpressure` makes the ready and valid signals of the memory and of the
// control port pause at random, as the cocotb benches do.
//
// An AXI rule the kernel breaks (a burst across 4 KiB, a wrong WLAST, a burst
// type other than INCR), a $fatal/$stop/$finish of the model, or a control
// access that never completes fail the device: that call and every later one
// return HX_ERROR with the message (`hx_error`). A transfer outside the address
// space is refused (HX_ERROR) and changes nothing. A wait that runs out of time
// says so in its result and leaves the device usable.
//
// Built by host/hetadam/hdl/verilator.py (profile "device") with
// -DVL_USER_FATAL -DVL_USER_STOP -DVL_USER_FINISH: the model's $fatal, $stop and
// $finish throw here instead of ending the host process.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "Vhetadam_adam.h"
#include "verilated.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr int HX_OK = 0;
constexpr int HX_ERROR = 1;

constexpr uint64_t ADDRESS_LIMIT = 1ull << 48;  // the address space the masters share
constexpr unsigned PAGE_BITS = 16;
constexpr uint64_t PAGE = 1ull << PAGE_BITS;
constexpr unsigned QUEUE = 8;            // bursts a slave holds a direction before it stalls AR/AW
constexpr uint64_t LITE_CLOCKS = 4096;   // clocks an AXI4-Lite access may take
constexpr uint64_t CLOCK_CHECK = 1024;   // clocks between two looks at the wall clock
constexpr uint64_t POLL_MIN = 16;        // clocks between two reads of a polled register, at first...
constexpr uint64_t POLL_MAX = 1024;      // ...growing with the time polled (1/8 of it), up to this

struct Failure : std::runtime_error {  // the device is broken from here on
  using std::runtime_error::runtime_error;
};

struct Refused : std::runtime_error {  // a request refused; the device is as it was
  using std::runtime_error::runtime_error;
};

std::string hex(uint64_t v) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

// ---------------------------------------------------------------- memory

class Memory {
 public:
  // The page holding `address`; nullptr for a page never written unless `create`.
  uint8_t* page(uint64_t address, bool create) {
    const uint64_t index = address >> PAGE_BITS;
    const auto it = pages_.find(index);
    if (it != pages_.end()) return it->second.get();
    if (!create) return nullptr;
    auto fresh = std::make_unique<uint8_t[]>(PAGE);  // value-initialised: zero
    uint8_t* raw = fresh.get();
    pages_.emplace(index, std::move(fresh));
    return raw;
  }

  void write(uint64_t address, const uint8_t* src, uint64_t length) {
    while (length) {
      const uint64_t offset = address & (PAGE - 1);
      const uint64_t take = std::min(length, PAGE - offset);
      std::memcpy(page(address, true) + offset, src, take);
      address += take, src += take, length -= take;
    }
  }

  void read(uint64_t address, uint8_t* dst, uint64_t length) {  // zeros where never written
    while (length) {
      const uint64_t offset = address & (PAGE - 1);
      const uint64_t take = std::min(length, PAGE - offset);
      const uint8_t* p = page(address, false);
      if (p)
        std::memcpy(dst, p + offset, take);
      else
        std::memset(dst, 0, take);
      address += take, dst += take, length -= take;
    }
  }

 private:
  std::unordered_map<uint64_t, std::unique_ptr<uint8_t[]>> pages_;
};

// The last page a port touched: a bus word is aligned and at most 128 bytes, so
// it never straddles a page.
class PageCache {
 public:
  uint8_t* word(Memory& memory, uint64_t address, bool create) {
    const uint64_t index = address >> PAGE_BITS;
    if (page_ == nullptr || index != index_) {
      uint8_t* p = memory.page(address, create);
      if (p == nullptr) return nullptr;
      page_ = p, index_ = index;
    }
    return page_ + (address & (PAGE - 1));
  }

 private:
  uint8_t* page_ = nullptr;
  uint64_t index_ = 0;
};

// ---------------------------------------------------------------- ports

template <class T>
struct Bus {  // a data port of 32 or 64 bits
  static_assert(std::is_integral<T>::value, "a port of at most 64 bits is an integer");
  static constexpr unsigned bytes = sizeof(T);
  static void load(T& port, const uint8_t* src) { std::memcpy(&port, src, bytes); }
  static void store(const T& port, uint8_t* dst) { std::memcpy(dst, &port, bytes); }
};

template <std::size_t W>
struct Bus<VlWide<W>> {  // a wider port: W 32-bit words, least significant first
  static constexpr unsigned bytes = 4 * W;
  static void load(VlWide<W>& port, const uint8_t* src) { std::memcpy(port.data(), src, bytes); }
  static void store(const VlWide<W>& port, uint8_t* dst) { std::memcpy(dst, port.data(), bytes); }
};

class Random {  // xorshift64*
 public:
  void reseed(uint64_t seed) { state_ = seed ? seed : 0x9E3779B97F4A7C15ull; }
  bool pause(unsigned permille) {
    if (permille == 0) return false;
    state_ ^= state_ >> 12, state_ ^= state_ << 25, state_ ^= state_ >> 27;
    return (state_ * 0x2545F4914F6CDD1Dull >> 32) % 1000 < permille;
  }

 private:
  uint64_t state_ = 0x9E3779B97F4A7C15ull;
};

struct Burst {
  uint64_t address = 0;  // of the first beat, as the master gave it
  uint32_t beats = 0;
  uint32_t step = 0;  // bytes a beat (AxSIZE)
  uint32_t done = 0;
  uint8_t id = 0;
  uint64_t beat_address() const {
    return done == 0 ? address : (address & ~uint64_t(step - 1)) + uint64_t(done) * step;
  }
};

template <class T, unsigned N>
class Ring {
 public:
  bool empty() const { return count_ == 0; }
  bool full() const { return count_ == N; }
  unsigned size() const { return count_; }
  T& front() { return items_[head_]; }
  void push(const T& item) { items_[(head_ + count_++) % N] = item; }
  void pop() { head_ = (head_ + 1) % N, --count_; }
  void clear() { head_ = count_ = 0; }

 private:
  T items_[N];
  unsigned head_ = 0, count_ = 0;
};

// ---------------------------------------------------------------- AXI4 slave

// One AXI4 slave over the shared memory. Its outputs are registered: observe()
// takes the handshakes (and their payloads) of a clock before its rising edge,
// drive() sets the outputs of the next clock after it.
template <class D, class S>
class Slave {
 public:
  struct Ports {
    CData &arvalid, &arready, &arlen, &arsize, &arburst, &arid;
    QData& araddr;
    CData &rvalid, &rready, &rlast, &rresp, &rid;
    D& rdata;
    CData &awvalid, &awready, &awlen, &awsize, &awburst, &awid;
    QData& awaddr;
    CData &wvalid, &wready, &wlast;
    D& wdata;
    S& wstrb;
    CData &bvalid, &bready, &bresp, &bid;
  };
  static constexpr unsigned bytes = Bus<D>::bytes;

  Slave(const char* name, const Ports& ports) : name_(name), p_(ports) {}

  void observe(Memory& memory) {
    r_ = p_.rvalid && p_.rready;
    b_ = p_.bvalid && p_.bready;
    if (p_.arvalid && p_.arready) reads_.push(accept(p_.araddr, p_.arlen, p_.arsize, p_.arburst, p_.arid, "AR"));
    if (r_ && ++reads_.front().done == reads_.front().beats) reads_.pop();
    if (p_.awvalid && p_.awready) writes_.push(accept(p_.awaddr, p_.awlen, p_.awsize, p_.awburst, p_.awid, "AW"));
    if (p_.wvalid && p_.wready) write_beat(memory);
    if (b_) responses_.pop();
  }

  void drive(Memory& memory, Random& random, unsigned pause) {
    p_.arready = !reads_.full() && !random.pause(pause);
    if (!p_.rvalid || r_) {  // a beat shown stays until taken
      p_.rvalid = 0;
      if (!reads_.empty() && !random.pause(pause)) {
        const Burst& burst = reads_.front();
        static const uint8_t zero[bytes] = {};
        const uint8_t* word = cache_.word(memory, burst.beat_address() & ~uint64_t(bytes - 1), false);
        Bus<D>::load(p_.rdata, word ? word : zero);
        p_.rvalid = 1;
        p_.rlast = burst.done + 1 == burst.beats;
        p_.rid = burst.id;
        p_.rresp = 0;
      }
    }
    // a burst is taken only when its response will fit too, however long BREADY stays low
    p_.awready = writes_.size() + responses_.size() < QUEUE && !random.pause(pause);
    p_.wready = !writes_.empty() && !random.pause(pause);
    if (!p_.bvalid || b_) {
      p_.bvalid = !responses_.empty() && !random.pause(pause);
      if (p_.bvalid) p_.bid = responses_.front(), p_.bresp = 0;
    }
  }

  void reset() {
    reads_.clear(), writes_.clear(), responses_.clear();
    r_ = b_ = false;
    p_.arready = p_.rvalid = p_.awready = p_.wready = p_.bvalid = 0;
  }

 private:
  Burst accept(uint64_t address, unsigned len, unsigned size, unsigned type, uint8_t id, const char* channel) {
    Burst burst;
    burst.address = address, burst.beats = len + 1, burst.step = 1u << size, burst.id = id;
    const std::string where = std::string(name_) + " " + channel + " at " + hex(address);
    if (type != 1) throw Failure(where + ": burst type " + std::to_string(type) + "; only INCR (1) is used");
    if (burst.step > bytes)
      throw Failure(where + ": AxSIZE of " + std::to_string(burst.step) + " bytes, wider than the bus");
    const uint64_t first = address & ~uint64_t(burst.step - 1);
    const uint64_t length = uint64_t(burst.beats) * burst.step;
    if ((first & 0xFFF) + length > 0x1000)
      throw Failure(where + ": a burst of " + std::to_string(burst.beats) + " beats crosses a 4 KiB boundary");
    if (first + length > ADDRESS_LIMIT) throw Failure(where + ": outside the 2^48-byte address space");
    return burst;
  }

  void write_beat(Memory& memory) {
    if (writes_.empty()) throw Failure(std::string(name_) + " W: a beat with no burst address accepted");
    Burst& burst = writes_.front();
    const bool last = burst.done + 1 == burst.beats;
    if (bool(p_.wlast) != last)
      throw Failure(std::string(name_) + " W: WLAST " + (last ? "missing on" : "set before") + " the last beat of a " +
                    std::to_string(burst.beats) + "-beat burst at " + hex(burst.address));
    uint8_t* word = cache_.word(memory, burst.beat_address() & ~uint64_t(bytes - 1), true);
    uint8_t data[bytes];
    Bus<D>::store(p_.wdata, data);
    const uint64_t strobes = uint64_t(p_.wstrb);
    for (unsigned i = 0; i < bytes; ++i)
      if (strobes >> i & 1) word[i] = data[i];
    if (++burst.done == burst.beats) {
      responses_.push(burst.id);
      writes_.pop();
    }
  }

  const char* name_;
  Ports p_;
  PageCache cache_;
  Ring<Burst, QUEUE> reads_, writes_;
  Ring<uint8_t, QUEUE> responses_;
  bool r_ = false, b_ = false;  // the R and B handshakes of the last clock
};

#define HX_PORTS(top, b)                                                                                       \
  {                                                                                                            \
    top->m_axi_##b##_ARVALID, top->m_axi_##b##_ARREADY, top->m_axi_##b##_ARLEN, top->m_axi_##b##_ARSIZE,       \
        top->m_axi_##b##_ARBURST, top->m_axi_##b##_ARID, top->m_axi_##b##_ARADDR, top->m_axi_##b##_RVALID,     \
        top->m_axi_##b##_RREADY, top->m_axi_##b##_RLAST, top->m_axi_##b##_RRESP, top->m_axi_##b##_RID,         \
        top->m_axi_##b##_RDATA, top->m_axi_##b##_AWVALID, top->m_axi_##b##_AWREADY, top->m_axi_##b##_AWLEN,    \
        top->m_axi_##b##_AWSIZE, top->m_axi_##b##_AWBURST, top->m_axi_##b##_AWID, top->m_axi_##b##_AWADDR,     \
        top->m_axi_##b##_WVALID, top->m_axi_##b##_WREADY, top->m_axi_##b##_WLAST, top->m_axi_##b##_WDATA,      \
        top->m_axi_##b##_WSTRB, top->m_axi_##b##_BVALID, top->m_axi_##b##_BREADY, top->m_axi_##b##_BRESP,      \
        top->m_axi_##b##_BID                                                                                   \
  }

// The slave type of master `b`: its data and strobe types as Verilator declared them.
#define HX_SLAVE(b)                                                                \
  Slave<std::remove_reference_t<decltype(std::declval<Vhetadam_adam>().m_axi_##b##_RDATA)>, \
        std::remove_reference_t<decltype(std::declval<Vhetadam_adam>().m_axi_##b##_WSTRB)>>

using SlaveP = HX_SLAVE(gmem_p);
using SlaveG = HX_SLAVE(gmem_g);
using SlaveMs = HX_SLAVE(gmem_ms);
using SlaveEx = HX_SLAVE(gmem_ex);

// ---------------------------------------------------------------- the device

// What the harness knows of the control register (from hetadam/regmap.py,
// passed to hx_open): its offset and the bits that say a run is in flight.
struct Control {
  uint32_t offset;
  uint32_t start;   // ap_start
  uint32_t idle;    // ap_idle
  uint32_t events;  // the clear-on-read bits that end a run (ap_done, ap_ready)
  bool busy(uint32_t value) const { return !(value & events) && ((value & start) || !(value & idle)); }
};

class Device {
 public:
  explicit Device(const Control& control)
      : control_(control),
        context_(std::make_unique<VerilatedContext>()),
        top_(std::make_unique<Vhetadam_adam>(context_.get(), "hetadam_adam")),
        p_("gmem_p", HX_PORTS(top_, gmem_p)),
        g_("gmem_g", HX_PORTS(top_, gmem_g)),
        ms_("gmem_ms", HX_PORTS(top_, gmem_ms)),
        ex_("gmem_ex", HX_PORTS(top_, gmem_ex)) {
    top_->ap_clk = 0;
    top_->ap_rst_n = 0;
    lite_idle();
    p_.reset(), g_.reset(), ms_.reset(), ex_.reset();
    for (int i = 0; i < 8; ++i) cycle();
    top_->ap_rst_n = 1;
    for (int i = 0; i < 4; ++i) cycle();
  }

  // ---- what the host does

  void write32(uint32_t offset, uint32_t value) {
    bus_write32(offset, value);
    if (offset == control_.offset && (value & control_.start)) started_ = true;
  }

  // A read of the control register returns, besides what the register shows,
  // the clear-on-read bits the harness's own reads took (see drain()).
  uint32_t read32(uint32_t offset) {
    if (offset != control_.offset) return bus_read32(offset);
    return seen(bus_read32(offset));
  }

  // The control register, read again every POLL_MIN..POLL_MAX clocks while a run
  // is in flight, until it shows the run's end or `deadline` passes.
  uint32_t poll_control(Clock::time_point deadline) { return seen(poll(deadline)); }

  // Clocks until the interrupt line is high; false when `deadline` came first.
  bool wait_interrupt(Clock::time_point deadline) {
    for (uint64_t i = 1; !top_->__SYM__interrupt; ++i) {
      if (i % CLOCK_CHECK == 0 && Clock::now() > deadline) return false;
      cycle();
    }
    return true;
  }

  // The host's copies to and from memory. Simulated time passes only inside
  // calls, so a run the host started and left (a Ctrl-C while it waited) would
  // still be half-way through its buffers: it is finished first, as on a board
  // it would have finished while the host was away.
  void mem_write(uint64_t address, const uint8_t* src, uint64_t length, Clock::time_point deadline) {
    drain(deadline);
    memory_.write(address, src, length);
  }

  void mem_read(uint64_t address, uint8_t* dst, uint64_t length, Clock::time_point deadline) {
    drain(deadline);
    memory_.read(address, dst, length);
  }

  void backpressure(unsigned memory_permille, unsigned control_permille, uint64_t seed) {
    mem_pause = memory_permille, ctrl_pause = control_permille;
    random_.reseed(seed);
  }

  uint64_t cycles = 0;

 private:
  uint32_t seen(uint32_t value) {
    value |= sticky_;
    sticky_ = 0;
    if (!control_.busy(value)) started_ = false;
    return value;
  }

  uint32_t poll(Clock::time_point deadline) {
    const uint64_t begin = cycles;
    uint32_t value = bus_read32(control_.offset);
    while (control_.busy(value) && Clock::now() < deadline) {
      const uint64_t gap = std::clamp<uint64_t>((cycles - begin) / 8, POLL_MIN, POLL_MAX);
      for (uint64_t i = 0; i < gap; ++i) cycle();
      value = bus_read32(control_.offset);
    }
    return value;
  }

  void drain(Clock::time_point deadline) {
    if (!started_) return;
    const uint32_t value = poll(deadline);
    sticky_ |= value & control_.events;  // the host's next read of the register gets them
    if (control_.busy(value))
      throw Refused("the kernel is still running a run started earlier; the transfer waited in vain");
    started_ = false;
  }

  // ---- the control port's bus

  void bus_write32(uint32_t offset, uint32_t value) {
    auto* t = top_.get();
    t->s_axi_control_AWADDR = offset, t->s_axi_control_WDATA = value, t->s_axi_control_WSTRB = 0xF;
    bool aw = false, w = false;
    for (uint64_t i = 0;; ++i) {
      t->s_axi_control_AWVALID = !aw && (t->s_axi_control_AWVALID || !random_.pause(ctrl_pause));
      t->s_axi_control_WVALID = !w && (t->s_axi_control_WVALID || !random_.pause(ctrl_pause));
      t->s_axi_control_BREADY = aw && w && !random_.pause(ctrl_pause);
      const Lite h = lite_cycle(i, "write", offset);
      aw |= h.aw, w |= h.w;
      if (h.b) {
        lite_idle();
        if (h.resp)
          throw Failure("the write of register " + hex(offset) + " was answered BRESP " + std::to_string(h.resp));
        return;
      }
    }
  }

  uint32_t bus_read32(uint32_t offset) {
    auto* t = top_.get();
    t->s_axi_control_ARADDR = offset;
    bool ar = false;
    for (uint64_t i = 0;; ++i) {
      t->s_axi_control_ARVALID = !ar && (t->s_axi_control_ARVALID || !random_.pause(ctrl_pause));
      t->s_axi_control_RREADY = ar && !random_.pause(ctrl_pause);
      const Lite h = lite_cycle(i, "read", offset);
      ar |= h.ar;
      if (h.r) {
        lite_idle();
        if (h.resp)
          throw Failure("the read of register " + hex(offset) + " was answered RRESP " + std::to_string(h.resp));
        return h.data;
      }
    }
  }

  struct Lite {  // the handshakes of the control port in one clock
    bool aw = false, w = false, b = false, ar = false, r = false;
    unsigned resp = 0;
    uint32_t data = 0;
  };

  void lite_idle() {
    auto* t = top_.get();
    t->s_axi_control_AWVALID = t->s_axi_control_WVALID = t->s_axi_control_BREADY = 0;
    t->s_axi_control_ARVALID = t->s_axi_control_RREADY = 0;
  }

  Lite lite_cycle(uint64_t i, const char* access, uint32_t offset) {
    if (i >= LITE_CLOCKS)
      throw Failure(std::string("the ") + access + " of register " + hex(offset) + " did not complete within " +
                    std::to_string(LITE_CLOCKS) + " clocks");
    return cycle();
  }

  // One clock: settle, take every handshake, rising edge, then the slaves drive the next clock.
  Lite cycle() {
    auto* t = top_.get();
    t->ap_clk = 0;
    t->eval();
    Lite h;
    h.aw = t->s_axi_control_AWVALID && t->s_axi_control_AWREADY;
    h.w = t->s_axi_control_WVALID && t->s_axi_control_WREADY;
    h.b = t->s_axi_control_BVALID && t->s_axi_control_BREADY;
    h.ar = t->s_axi_control_ARVALID && t->s_axi_control_ARREADY;
    h.r = t->s_axi_control_RVALID && t->s_axi_control_RREADY;
    h.resp = h.b ? t->s_axi_control_BRESP : (h.r ? t->s_axi_control_RRESP : 0);
    h.data = t->s_axi_control_RDATA;
    const bool running = t->ap_rst_n;
    if (running) p_.observe(memory_), g_.observe(memory_), ms_.observe(memory_), ex_.observe(memory_);
    t->ap_clk = 1;
    t->eval();
    ++cycles;
    if (running) {
      p_.drive(memory_, random_, mem_pause);
      g_.drive(memory_, random_, mem_pause);
      ms_.drive(memory_, random_, mem_pause);
      ex_.drive(memory_, random_, mem_pause);
    }
    return h;
  }

  const Control control_;
  bool started_ = false;  // the host started a run and no read has seen it end
  uint32_t sticky_ = 0;   // clear-on-read bits drain() took, for the host's next read
  Memory memory_;
  unsigned mem_pause = 0, ctrl_pause = 0;
  Random random_;
  std::unique_ptr<VerilatedContext> context_;
  std::unique_ptr<Vhetadam_adam> top_;
  SlaveP p_;
  SlaveG g_;
  SlaveMs ms_;
  SlaveEx ex_;
};

}  // namespace

// ---------------------------------------------------------------- the model's $fatal, $stop, $finish

void vl_fatal(const char* filename, int linenum, const char*, const char* msg) {
  throw Failure(std::string("the model stopped: ") + msg + " (" + filename + ":" + std::to_string(linenum) + ")");
}

void vl_stop(const char* filename, int linenum, const char*) {  // $stop, and $fatal after it printed its message
  throw Failure(std::string("the model stopped ($stop or $fatal at ") + filename + ":" + std::to_string(linenum) +
                "; its message went to the standard output)");
}

void vl_finish(const char* filename, int linenum, const char*) {
  throw Failure(std::string("the model ran $finish (") + filename + ":" + std::to_string(linenum) + ")");
}

// ---------------------------------------------------------------- the C interface

struct hx_device {
  std::unique_ptr<Device> device;
  std::string error;   // the last call's, or why the device failed
  bool failed = false;
};

namespace {

Clock::time_point after(double seconds) {
  const double limit = std::min(seconds, 1e9);
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limit));
}

template <class F>
int guarded(hx_device* h, F&& call) {
  if (h->failed) return HX_ERROR;  // h->error says why
  try {
    call();
    return HX_OK;
  } catch (const Refused& e) {
    h->error = e.what();
    return HX_ERROR;
  } catch (const std::exception& e) {
    h->error = e.what();
    h->failed = true;
    return HX_ERROR;
  }
}

void check_range(uint64_t address, uint64_t length) {
  if (address > ADDRESS_LIMIT || length > ADDRESS_LIMIT - address)
    throw Refused("a transfer of " + std::to_string(length) + " bytes at " + hex(address) +
                  " lies outside the 2^48-byte address space");
}

}  // namespace

extern "C" {

// A new device, reset; nullptr when the model cannot be made (`error` says why).
// `control` is the control register's offset; `start`, `idle` and `events`
// its ap_start and ap_idle bits and the clear-on-read bits that end a run.
hx_device* hx_open(uint32_t control, uint32_t start, uint32_t idle, uint32_t events, char* error, size_t error_size) {
  auto h = std::make_unique<hx_device>();
  try {
    h->device = std::make_unique<Device>(Control{control, start, idle, events});
  } catch (const std::exception& e) {
    std::snprintf(error, error_size, "%s", e.what());
    return nullptr;
  }
  return h.release();
}

void hx_close(hx_device* h) { delete h; }

const char* hx_error(const hx_device* h) { return h->error.c_str(); }

uint64_t hx_cycles(const hx_device* h) { return h->device->cycles; }

// Bytes of a beat of master 0 (p), 1 (g), 2 (ms), 3 (ex): what the model was built with.
unsigned hx_data_bytes(int master) {
  const unsigned widths[] = {SlaveP::bytes, SlaveG::bytes, SlaveMs::bytes, SlaveEx::bytes};
  return master >= 0 && master < 4 ? widths[master] : 0;
}

int hx_write32(hx_device* h, uint32_t offset, uint32_t value) {
  return guarded(h, [&] { h->device->write32(offset, value); });
}

int hx_read32(hx_device* h, uint32_t offset, uint32_t* value) {
  return guarded(h, [&] { *value = h->device->read32(offset); });
}

// The control register, polled in simulation while a run is in flight, for at most `seconds`.
int hx_poll_control(hx_device* h, double seconds, uint32_t* value) {
  return guarded(h, [&] { *value = h->device->poll_control(after(seconds)); });
}

// HX_OK with *raised = 1 when the line rose, 0 when `seconds` passed first.
int hx_wait_interrupt(hx_device* h, double seconds, int* raised) {
  return guarded(h, [&] { *raised = h->device->wait_interrupt(after(seconds)); });
}

// `seconds`: how long to wait for a run the host started and left (see Device::mem_write).
int hx_mem_write(hx_device* h, uint64_t address, const void* src, uint64_t length, double seconds) {
  return guarded(h, [&] {
    check_range(address, length);
    h->device->mem_write(address, static_cast<const uint8_t*>(src), length, after(seconds));
  });
}

int hx_mem_read(hx_device* h, uint64_t address, void* dst, uint64_t length, double seconds) {
  return guarded(h, [&] {
    check_range(address, length);
    h->device->mem_read(address, static_cast<uint8_t*>(dst), length, after(seconds));
  });
}

// Random pauses of every ready/valid: `memory` and `control` in 1/1000 of the clocks.
void hx_backpressure(hx_device* h, unsigned memory, unsigned control, uint64_t seed) {
  h->device->backpressure(std::min(memory, 1000u), std::min(control, 1000u), seed);
}

}  // extern "C"
