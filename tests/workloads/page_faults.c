/* The page-fault profiler's workload: every 50 ms, grow_fast() maps 2 MiB of fresh anonymous
 * memory and touches each page, grow_slow() 1 MiB; so the two functions fault in new pages at
 * 2:1. spin_here() burns 5 ms of CPU on memory it already has and faults nothing. The oldest regions
 * are unmapped past 64 of each, so the process stays under ~200 MiB while its faults go on.
 * Transparent huge pages are off for the process, so every 4 KiB page is one fault. Runs for
 * argv[1] seconds (default 30). Built with frame pointers by `cargo xtask test`. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define KEEP 64

static char scratch[64 * 1024];

static char *fresh(size_t bytes)
{
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Writes one byte per page, here, so the faulting instruction is in the caller's frame. */
__attribute__((noinline)) char *grow_fast(void)
{
    char *p = fresh(2 << 20);
    if (p)
        for (size_t i = 0; i < (2 << 20); i += PAGE)
            ((volatile char *)p)[i] = 1;
    return p;
}

__attribute__((noinline)) char *grow_slow(void)
{
    char *p = fresh(1 << 20);
    if (p)
        for (size_t i = 0; i < (1 << 20); i += PAGE)
            ((volatile char *)p)[i] = 1;
    return p;
}

/* 5 ms of this thread's CPU time per call, however fast the machine (a fixed count of rounds
 * took ~0.3 ms here and gave the CPU profile ~5 samples in 8 s at 99 Hz: sometimes none on a
 * loaded host; this gives ~70, and as many under emulation). */
__attribute__((noinline)) void spin_here(void)
{
    struct timespec from, now;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &from);
    do {
        for (size_t i = 0; i < sizeof scratch; i += 64)
            ((volatile char *)scratch)[i]++;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    } while ((now.tv_sec - from.tv_sec) * 1000000000L + (now.tv_nsec - from.tv_nsec) < 5000000L);
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 30;
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    char *fast[KEEP] = {0}, *slow[KEEP] = {0};
    struct timespec start, now, tick = {0, 50 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned n = 0;; n++) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= seconds)
            break;
        unsigned i = n % KEEP;
        if (fast[i])
            munmap(fast[i], 2 << 20);
        if (slow[i])
            munmap(slow[i], 1 << 20);
        fast[i] = grow_fast();
        slow[i] = grow_slow();
        spin_here();
        nanosleep(&tick, NULL);
    }
    return 0;
}
