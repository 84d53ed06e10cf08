/*
 * Prints "sleeping N", sleeps N seconds (argv[1], default 3600) through
 * WASI poll_oneoff, then prints "awake". Used to test kill and timeouts of
 * a guest that is blocked in the host rather than running code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    unsigned seconds = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 3600;
    printf("sleeping %u\n", seconds);
    fflush(stdout);
    sleep(seconds);
    puts("awake");
    return 0;
}
