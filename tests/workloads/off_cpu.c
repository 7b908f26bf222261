/* The off-CPU profiler's workload: thread "sleeper" waits in wait_here() 200 ms at a time
 * (nanosleep), thread "spinner" burns CPU in spin_here() and never blocks. Runs for argv[1]
 * seconds (default 30). Built with frame pointers by `cargo xtask test`. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;

/* A frame between wait_here and libc's nanosleep: libc has no frame pointers, so the walk from
 * inside it skips its caller's frame; this one is skipped, wait_here is not. */
__attribute__((noinline)) static void do_sleep(void)
{
    struct timespec t = {0, 200 * 1000 * 1000};
    nanosleep(&t, NULL);
    __asm__ volatile("");
}

__attribute__((noinline)) void wait_here(void)
{
    do_sleep();
    __asm__ volatile("");
}

__attribute__((noinline)) void spin_here(void)
{
    for (volatile unsigned long i = 0; i < 1000000; i++) {
    }
}

static void *sleeper(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "sleeper");
    while (!stop)
        wait_here();
    return NULL;
}

static void *spinner(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "spinner");
    while (!stop)
        spin_here();
    return NULL;
}

int main(int argc, char **argv)
{
    int secs = argc > 1 ? atoi(argv[1]) : 30;
    pthread_t a, b;
    pthread_create(&a, NULL, sleeper, NULL);
    pthread_create(&b, NULL, spinner, NULL);
    sleep(secs);
    stop = 1;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
