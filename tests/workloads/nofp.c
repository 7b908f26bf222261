/* Test workload for DWARF unwinding: burns CPU for argv[1] seconds (default 10) in two
 * comparators the C library's qsort calls, 3:1 (the same work per sort, alpha's sort drawn at
 * random three times in four), on two paths several frames deep:
 *   main → run → sort_alpha → qsort (libc) → cmp_alpha
 *   main → run → sort_beta  → qsort (libc) → cmp_beta
 * Built by xtask with -O2 -fomit-frame-pointer, and libc keeps no frame pointers either: only
 * unwind tables (.eh_frame) lead from a comparator back to main.
 * noinline + noclone keep every function and its name (no `.constprop` copy); the work after
 * each qsort call keeps it a `call` (a tail call would drop sort_alpha from the stack). */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "three_to_one.h"

static volatile uint64_t sink;

/* Keys sorted per call: the same ones for both paths, so both qsort calls compare the same
 * pairs, as many times. */
#define KEYS 64
/* Generator steps per comparison, on either path. */
#define STEPS 2000

/* The comparators' work: a chain of dependent multiplications seeded by both keys, written to
 * the volatile sink so that none of it can be skipped. Inlined into each comparator, so that
 * the comparator itself is the leaf. */
static inline __attribute__((always_inline)) int compare_with_work(const void *pa, const void *pb,
                                                                   uint64_t increment) {
    uint32_t a = *(const uint32_t *)pa;
    uint32_t b = *(const uint32_t *)pb;
    uint64_t x = a ^ ((uint64_t)b << 32);
    for (long i = 0; i < STEPS; i++) {
        x = x * 6364136223846793005ULL + increment;
    }
    sink = x;
    return (a > b) - (a < b);
}

/* The same work with different increments: identical functions are folded into one at -O2
 * (-fipa-icf), and one comparator's samples would carry the other's name. */
__attribute__((noinline, noclone)) int cmp_alpha(const void *a, const void *b) {
    return compare_with_work(a, b, 1442695040888963407ULL);
}

__attribute__((noinline, noclone)) int cmp_beta(const void *a, const void *b) {
    return compare_with_work(a, b, 0x2545F4914F6CDD1DULL);
}

__attribute__((noinline, noclone)) void sort_alpha(uint32_t *keys) {
    qsort(keys, KEYS, sizeof *keys, cmp_alpha);
    sink = keys[0];
}

__attribute__((noinline, noclone)) void sort_beta(uint32_t *keys) {
    qsort(keys, KEYS, sizeof *keys, cmp_beta);
    sink = keys[0];
}

/* The same pseudo-random keys every time. */
static void fill(uint32_t *keys) {
    uint32_t x = 12345;
    for (int i = 0; i < KEYS; i++) {
        x = x * 1103515245u + 12345u;
        keys[i] = x >> 8;
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline, noclone)) void run(double seconds) {
    uint32_t keys[KEYS];
    double end = now() + seconds;
    struct three_to_one draw = THREE_TO_ONE_INIT;
    while (now() < end) {
        fill(keys);
        if (three_to_one_alpha(&draw)) {
            sort_alpha(keys);
        } else {
            sort_beta(keys);
        }
    }
}

int main(int argc, char **argv) {
    run(argc > 1 ? atof(argv[1]) : 10.0);
    return 0;
}
