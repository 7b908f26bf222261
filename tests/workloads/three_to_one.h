/* The 3:1 draw the profiling workloads share (hot.c, nofp.c; three_to_one.rs for Rust).
 *
 * One beta in each group of four calls, at a place drawn at random: exactly 3:1 over a run, in
 * no fixed rhythm. Calls of a fixed rhythm close to the sampling period (alpha's 3 units then
 * beta's 1 took about 1 ms, the sampler ticks at 997 Hz) let samples fall in step with it, which
 * skewed the ratio by 10% under load; a free draw of three in four came out 2.88:1 over a run's
 * few thousand calls. */
#ifndef THREE_TO_ONE_H
#define THREE_TO_ONE_H

#include <stdint.h>

struct three_to_one {
    uint64_t state;
    unsigned call;
    unsigned beta_at;
};

#define THREE_TO_ONE_INIT {0x9E3779B97F4A7C15ULL, 0, 0}

/* Whether this call is alpha's (otherwise beta's). */
static inline int three_to_one_alpha(struct three_to_one *d) {
    if (d->call % 4 == 0) {
        /* xorshift64 */
        d->state ^= d->state << 13;
        d->state ^= d->state >> 7;
        d->state ^= d->state << 17;
        d->beta_at = d->state % 4;
    }
    return d->call++ % 4 != d->beta_at;
}

#endif
