/* Test workload: burns CPU in two known functions, 3:1 (one unit per call, alpha called three
 * times as often, in random order), for argv[1] seconds (default 10).
 * Built by xtask with -fno-omit-frame-pointer so the profiler can walk its
 * stacks (GCC still gives these leaf functions no frame: their caller, main, is skipped). */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "three_to_one.h"

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
    struct three_to_one draw = THREE_TO_ONE_INIT;
    while (now() < end) {
        if (three_to_one_alpha(&draw)) {
            hot_alpha(1);
        } else {
            hot_beta(1);
        }
    }
    return 0;
}
