/*
 * Prints "spinning", then burns CPU forever without calling the host.
 * Only an engine-side interrupt (epoch or fuel) or a kill can stop it.
 */
#include <stdio.h>

static volatile unsigned long counter;

int main(void) {
    puts("spinning");
    fflush(stdout);
    for (;;)
        counter++;
}
