// The machine's bound for `keopsc bench`: peak fused multiply-add throughput, all cores.
// gcc -O3 -march=native -fopenmp -DLANES=8 fma_peak.c   (LANES: f32 lanes of the vectors
// keopsc's code uses on this machine, 8 for 256-bit, 16 for 512-bit)
//
// Each thread runs CHAINS independent chains of vector FMAs (enough to cover the FMA latency
// on both FMA pipes), all in registers; prints `lane-ops/s=...`: one FMA on one f32 lane is
// one lane-op, counted over every thread (best of 5 runs).
#include <omp.h>
#include <stdio.h>

#ifndef LANES
#define LANES 8
#endif
#define CHAINS 12 /* the number of names in EACH */

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

#define EACH(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
#define DECLARE(k) vec c##k = a + (float)(k);
#define STEP(k) c##k = c##k * a + b;
// Keeps each chain in a register and every iteration's FMAs alive.
#define KEEP(k) __asm__ volatile("" : "+v"(c##k));
#define SUM(k) s += c##k;

static float chains(long iterations) {
  vec a, b;
  for (int l = 0; l < LANES; l++) {
    a[l] = 0.999999f;
    b[l] = 1e-6f;
  }
  EACH(DECLARE)
  for (long it = 0; it < iterations; it++) {
    EACH(STEP)
    EACH(KEEP)
  }
  vec s = b;
  EACH(SUM)
  float total = 0;
  for (int l = 0; l < LANES; l++) total += s[l];
  return total;
}

int main(void) {
  const long iterations = 20000000;
  double best = 0;
  float sink = 0;
  for (int rep = 0; rep < 5; rep++) {
    int threads = 1;
    double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
    {
#pragma omp single
      threads = omp_get_num_threads();
      sink += chains(iterations);
    }
    double t = omp_get_wtime() - t0;
    double rate = (double)iterations * CHAINS * LANES * threads / t;
    if (rate > best) best = rate;
  }
  printf("lane-ops/s=%.4e lanes=%d checksum=%g\n", best, LANES, (double)sink);
  return 0;
}
