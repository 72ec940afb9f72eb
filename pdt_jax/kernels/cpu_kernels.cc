// XLA:CPU custom calls for few-row decode (batch <= a handful of tokens), float32, row major.
//
// XLA:CPU runs a 1-row matmul as a fast matrix-vector product, but 2–4 rows go to general GEMM
// libraries whose packing and per-call overhead make 3 rows cost about twice 1 row — although the
// weights, which dominate the memory traffic, are read once either way. These kernels stream every
// weight row once and apply it to all rows in registers, so 3 rows cost about what 1 row does.
//
//   pdt_cpu_matmul       c[b] = a[b or 0] @ w[b or 0]            a [Ba, M, K], w [Bw, K, N]
//   pdt_cpu_moe_experts  y[e] = swiglu(x @ gate_up[e] + gate_up_bias[e]) @ down[e] + down_bias[e]
//                        x [M, D], gate_up [E, D, 2I] (even = gate, odd = up), down [E, I, D]
//
// Work is split in items (a column tile, or one expert) that the calling thread and a few worker
// threads of ours claim from an atomic counter (see Workers).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

constexpr int kMaxRows = 4;

// c[0:M, 0:16*NV] = a[0:M, 0:K] @ w[0:K, 0:16*NV]: each weight row is loaded once and used for
// all M rows, accumulating in registers.
template <int M, int NV>
inline void Tile(const float* __restrict a, int64_t lda, const float* __restrict w, int64_t ldw,
                 float* __restrict c, int64_t ldc, int64_t K) {
  v16 acc[M][NV];
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[m][j] = v16{};
  for (int64_t k = 0; k < K; ++k) {
    const float* row = w + k * ldw;
    v16 wv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) wv[j] = *reinterpret_cast<const v16u*>(row + 16 * j);
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      const float am = a[m * lda + k];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[m][j] += am * wv[j];
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) *reinterpret_cast<v16u*>(c + m * ldc + 16 * j) = acc[m][j];
}

template <int M>
constexpr int TileVectors() { return M <= 2 ? 8 : 4; }

template <int M>
constexpr int64_t TileWidth() { return 16 * TileVectors<M>(); }

// Columns [n0, n1) of c = a @ w for M <= kMaxRows rows: full tiles, then 16-wide strips, then the
// last < 16 columns.
template <int M>
void RowsM(const float* a, int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
           int64_t K, int64_t n0, int64_t n1) {
  constexpr int64_t NB = TileWidth<M>();
  for (; n0 + NB <= n1; n0 += NB) Tile<M, TileVectors<M>()>(a, lda, w + n0, ldw, c + n0, ldc, K);
  for (; n0 + 16 <= n1; n0 += 16) Tile<M, 1>(a, lda, w + n0, ldw, c + n0, ldc, K);
  if (n0 == n1) return;
  float acc[M][16] = {};
  for (int64_t k = 0; k < K; ++k)
    for (int m = 0; m < M; ++m)
      for (int64_t n = n0; n < n1; ++n) acc[m][n - n0] += a[m * lda + k] * w[k * ldw + n];
  for (int m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) c[m * ldc + n] = acc[m][n - n0];
}

// Any number of rows, in blocks of kMaxRows.
void Rows(const float* a, int64_t lda, const float* w, int64_t ldw, float* c, int64_t ldc,
          int64_t M, int64_t K, int64_t n0, int64_t n1) {
  for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
    const float* am = a + m0 * lda;
    float* cm = c + m0 * ldc;
    switch (std::min<int64_t>(kMaxRows, M - m0)) {
      case 1: RowsM<1>(am, lda, w, ldw, cm, ldc, K, n0, n1); break;
      case 2: RowsM<2>(am, lda, w, ldw, cm, ldc, K, n0, n1); break;
      case 3: RowsM<3>(am, lda, w, ldw, cm, ldc, K, n0, n1); break;
      default: RowsM<4>(am, lda, w, ldw, cm, ldc, K, n0, n1); break;
    }
  }
}

// A few worker threads of our own that stay awake (yielding) for 100 microseconds after each job:
// a decode step calls these kernels every few microseconds, and waking a sleeping thread costs more
// than the work it would take over. Each job is an immutable object with its own counters that
// workers hold by shared pointer, so a worker that picks up a job late finds nothing left to claim
// and never touches the next one; the caller claims items itself and waits only for items that
// were claimed, so it never waits on a thread that has not started (nor deadlocks after a fork).
class Workers {
 public:
  static Workers& Get() {
    static Workers* w = new Workers(std::max(1u, std::thread::hardware_concurrency()) - 1);
    return *w;
  }
  int64_t size() const { return size_; }

  // Runs fn(i) for i in [0, items) on the caller and up to `helpers` workers.
  void Run(int64_t items, int64_t helpers, std::function<void(int64_t)> fn) {
    helpers = std::min<int64_t>(helpers, size_);
    if (helpers <= 0 || items <= 1) {
      for (int64_t i = 0; i < items; ++i) fn(i);
      return;
    }
    auto job = std::make_shared<Job>(std::move(fn), items, helpers);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    job->Claim();
    while (job->done.load(std::memory_order_acquire) < items) Pause();
  }

 private:
  struct Job {
    std::function<void(int64_t)> fn;
    int64_t items, helpers;
    std::atomic<int64_t> next{0}, done{0};
    Job(std::function<void(int64_t)> f, int64_t n, int64_t h) : fn(std::move(f)), items(n), helpers(h) {}
    void Claim() {
      for (;;) {
        int64_t i = next.fetch_add(1, std::memory_order_relaxed);
        if (i >= items) return;
        fn(i);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };

  explicit Workers(unsigned n) : size_(n) {
    for (unsigned t = 0; t < n; ++t) std::thread([this, t] { Loop(t); }).detach();
  }
  static void Pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  void Loop(unsigned index) {
    uint64_t seen = 0;
    for (;;) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        job = job_;
      }
      if (static_cast<int64_t>(index) < job->helpers) job->Claim();
    }
  }

  int64_t size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Job> job_;
};

template <typename Body>
void ParallelFor(int64_t items, int64_t threads, Body body) {
  Workers::Get().Run(items, threads - 1, std::function<void(int64_t)>(std::move(body)));
}

// Two threads pay off once a call streams about half a megabyte of weights.
int64_t ThreadsFor(int64_t weight_bytes) {
  return std::min<int64_t>(Workers::Get().size() + 1, weight_bytes / (512 << 10) + 1);
}

ffi::Error Matmul(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> w,
                  ffi::ResultBuffer<ffi::F32> c) {
  auto ad = a.dimensions(), wd = w.dimensions();
  if (ad.size() != 3 || wd.size() != 3)
    return ffi::Error::InvalidArgument("pdt_cpu_matmul: expected a [B, M, K] and w [B, K, N]");
  const int64_t Ba = ad[0], M = ad[1], K = ad[2], Bw = wd[0], N = wd[2];
  if (wd[1] != K || (Ba != Bw && Ba != 1 && Bw != 1))
    return ffi::Error::InvalidArgument("pdt_cpu_matmul: a [B, M, K] and w [B, K, N] do not match");
  const int64_t batch = std::max(Ba, Bw), tile = 128;
  const int64_t tiles = (N + tile - 1) / tile;
  const float* ap = a.typed_data();
  const float* wp = w.typed_data();
  float* cp = c->typed_data();
  ParallelFor(batch * tiles, ThreadsFor(Bw * K * N * 4), [=](int64_t i) {
    const int64_t b = i / tiles, n0 = (i % tiles) * tile;
    Rows(ap + (Ba == 1 ? 0 : b * M * K), K, wp + (Bw == 1 ? 0 : b * K * N), N, cp + b * M * N, N,
         M, K, n0, std::min(N, n0 + tile));
  });
  return ffi::Error::Success();
}

typedef int32_t v16i __attribute__((vector_size(64)));

// exp on 16 lanes (Cephes' expf polynomial after a two-part ln 2 range reduction; about 1 ulp),
// inputs clamped to the finite range of float.
inline v16 Exp(v16 x) {
  const v16 hi = v16{} + 88.3762626647949f, lo = v16{} - 88.3762626647949f;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  v16 fx = x * 1.44269504088896341f + 0.5f;
  v16 n = __builtin_convertvector(__builtin_convertvector(fx, v16i), v16);
  n = n > fx ? n - 1.f : n;  // floor
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  v16 y = v16{} + 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.f;
  v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  return y * (v16)bits;  // a vector cast reinterprets the bits
}

// GPT-OSS's clamped SwiGLU on interleaved gate/up columns: [M, 2I] -> [M, I]. The gate is clamped
// from above only, up to [-limit, limit]; out = (up + 1) * gate * sigmoid(alpha * gate).
void Swiglu(const float* h, float* out, int64_t M, int64_t I, float limit, float alpha) {
  const v16i even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const v16i odd = even + 1;
  for (int64_t m = 0; m < M; ++m) {
    const float* hm = h + m * 2 * I;
    float* om = out + m * I;
    int64_t i = 0;
    for (; i + 16 <= I; i += 16) {
      v16 a = *reinterpret_cast<const v16u*>(hm + 2 * i), b = *reinterpret_cast<const v16u*>(hm + 2 * i + 16);
      v16 gate = __builtin_shuffle(a, b, even), up = __builtin_shuffle(a, b, odd);
      gate = gate > limit ? v16{} + limit : gate;
      up = up > limit ? v16{} + limit : up;
      up = up < -limit ? v16{} - limit : up;
      *reinterpret_cast<v16u*>(om + i) = (up + 1.f) * (gate / (1.f + Exp(-alpha * gate)));
    }
    for (; i < I; ++i) {
      float gate = std::min(hm[2 * i], limit);
      float up = std::min(std::max(hm[2 * i + 1], -limit), limit);
      om[i] = (up + 1.f) * (gate / (1.f + std::exp(-alpha * gate)));
    }
  }
}

ffi::Error MoeExperts(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gate_up,
                      ffi::Buffer<ffi::F32> gate_up_bias, ffi::Buffer<ffi::F32> down,
                      ffi::Buffer<ffi::F32> down_bias, ffi::ResultBuffer<ffi::F32> y, float limit,
                      float alpha) {
  auto xd = x.dimensions(), gd = gate_up.dimensions(), dd = down.dimensions();
  if (xd.size() != 2 || gd.size() != 3 || dd.size() != 3)
    return ffi::Error::InvalidArgument("pdt_cpu_moe_experts: expected x [M, D], gate_up [E, D, 2I], down [E, I, D]");
  const int64_t M = xd[0], D = xd[1], E = gd[0], I2 = gd[2], I = I2 / 2;
  if (gd[1] != D || I2 % 2 || dd[0] != E || dd[1] != I || dd[2] != D ||
      static_cast<int64_t>(gate_up_bias.element_count()) != E * I2 ||
      static_cast<int64_t>(down_bias.element_count()) != E * D)
    return ffi::Error::InvalidArgument("pdt_cpu_moe_experts: operand shapes do not match");
  const float* xp = x.typed_data();
  const float* gp = gate_up.typed_data();
  const float* gb = gate_up_bias.typed_data();
  const float* dp = down.typed_data();
  const float* db = down_bias.typed_data();
  float* yp = y->typed_data();
  // One item per expert: its gate/up rows, the activation and its down rows, all for every token.
  ParallelFor(E, ThreadsFor(E * 3 * I * D * 4), [=](int64_t e) {
    std::vector<float> h(M * I2), act(M * I);
    Rows(xp, D, gp + e * D * I2, I2, h.data(), I2, M, D, 0, I2);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t f = 0; f < I2; ++f) h[m * I2 + f] += gb[e * I2 + f];
    Swiglu(h.data(), act.data(), M, I, limit, alpha);
    float* ye = yp + e * M * D;
    Rows(act.data(), I, dp + e * I * D, D, ye, D, M, I, 0, D);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d) ye[m * D + d] += db[e * D + d];
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PdtCpuMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(PdtCpuMoeExperts, MoeExperts,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("limit")
                                  .Attr<float>("alpha"));
