/* Test workload: burns CPU in two known functions, 3:1 (one unit per call, alpha called three
 * times as often, in random order), for argv[1] seconds (default 10).
 * Built by xtask with -fno-omit-frame-pointer so the profiler can walk its
 * stacks (GCC still gives these leaf functions no frame: their caller, main, is skipped). */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static volatile uint64_t sink;

/* One unit of work: the same loop in both functions, so time is proportional to units. */
#define UNIT 200000

__attribute__((noinline)) void hot_alpha(int units) {
    uint64_t x = sink;
    for (long i = 0; i < (long)units * UNIT; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    }
    sink = x;
}

__attribute__((noinline)) void hot_beta(int units) {
    uint64_t x = sink;
    for (long i = 0; i < (long)units * UNIT; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    }
    sink = x;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10.0;
    double end = now() + seconds;
    /* Units drawn at random, three in four for alpha: calls of a fixed rhythm close to the
     * sampling period (alpha 3 units then beta 1 took about 1 ms, the sampler ticks at 997 Hz)
     * let samples fall in step with it, which skewed the ratio by 10% under load. */
    uint64_t r = 0x9E3779B97F4A7C15ULL;
    /* One beta in each group of four calls, at a place drawn at random: exactly 3:1, in no
     * fixed rhythm. */
    unsigned call = 0, beta_at = 0;
    while (now() < end) {
        if (call % 4 == 0) {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            beta_at = r % 4;
        }
        if (call++ % 4 != beta_at) {
            hot_alpha(1);
        } else {
            hot_beta(1);
        }
    }
    return 0;
}
