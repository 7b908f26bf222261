/* The allocation profiler's workload. Every 10 ms: alloc_big() mallocs 256 blocks of 2 KiB and
 * alloc_small() callocs 512 blocks of 512 B, and both free them before returning, so in bytes
 * they allocate at 2:1 and in blocks at 1:2, and hold nothing. On SIGUSR1 (sent once the
 * profiler is attached, so that it sees all of them), hold_here() mallocs 512 blocks of 32 KiB,
 * grows each to 64 KiB with realloc, and keeps them: HOLD_BYTES, the process's only memory in
 * use from then on. Runs for argv[1] seconds (default 30). Built with frame pointers by
 * `cargo xtask test`.
 *
 * `alloc calls N` (for `cargo xtask bench --only alloc`) instead waits for SIGUSR1, then times
 * N pairs of malloc(64) and free, prints the nanoseconds per pair and exits. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HOLD_BYTES (32 << 20)
#define HOLD_BLOCK (64 << 10)

static void *held[HOLD_BYTES / HOLD_BLOCK];
static volatile sig_atomic_t hold_now;

static void on_usr1(int sig)
{
    (void)sig;
    hold_now = 1;
}

/* Touches a block so the allocation cannot be optimized away. */
static void use(void *p, size_t n)
{
    if (p)
        ((volatile char *)p)[n - 1] = 1;
}

__attribute__((noinline)) void alloc_big(void)
{
    void *p[256];
    for (int i = 0; i < 256; i++) {
        p[i] = malloc(2048);
        use(p[i], 2048);
    }
    for (int i = 0; i < 256; i++)
        free(p[i]);
}

__attribute__((noinline)) void alloc_small(void)
{
    void *p[512];
    for (int i = 0; i < 512; i++) {
        p[i] = calloc(1, 512);
        use(p[i], 512);
    }
    for (int i = 0; i < 512; i++)
        free(p[i]);
}

__attribute__((noinline)) void hold_here(void)
{
    for (unsigned i = 0; i < sizeof held / sizeof held[0]; i++) {
        void *p = malloc(HOLD_BLOCK / 2);
        use(p, HOLD_BLOCK / 2);
        void *q = realloc(p, HOLD_BLOCK);
        if (!q) {
            free(p);
            continue;
        }
        memset(q, 1, HOLD_BLOCK);
        held[i] = q;
    }
}

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int calls(long pairs)
{
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    printf("ready\n");
    fflush(stdout);
    while (!hold_now)
        sigsuspend(&old);
    double start = now_ns();
    for (long i = 0; i < pairs; i++) {
        void *p = malloc(64);
        use(p, 64);
        free(p);
    }
    printf("%.1f ns per malloc+free\n", (now_ns() - start) / pairs);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "calls") == 0) {
        signal(SIGUSR1, on_usr1);
        return calls(atol(argv[2]));
    }
    int seconds = argc > 1 ? atoi(argv[1]) : 30;
    struct timespec start, now, tick = {0, 10 * 1000 * 1000};
    signal(SIGUSR1, on_usr1);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= seconds)
            break;
        alloc_big();
        alloc_small();
        if (hold_now == 1) {
            hold_now = 2;
            hold_here();
        }
        nanosleep(&tick, NULL);
    }
    return 0;
}
