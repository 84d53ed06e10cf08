/*
 * Prints "about to trap", then traps:
 *
 *   trap          __builtin_trap(): wasm `unreachable`
 *   trap div0     i32.div_s by zero: "integer divide by zero"
 *   trap stack    unbounded recursion: wasm call stack exhausted
 */
#include <stdio.h>
#include <string.h>

static volatile int one = 1, zero = 0;
static volatile unsigned depth;

/*
 * Each call stores to a volatile global and uses the callee's result, so it
 * can be neither removed nor turned into a loop. No local has its address
 * taken, so the frames live on the wasm call stack itself rather than on
 * wasi-libc's shadow stack in linear memory: the guard that fires is the
 * engine's stack limit, not an out-of-bounds memory access.
 */
static unsigned recurse(unsigned n) {
    depth = n;
    if (zero)
        return n;
    return recurse(n + 1) ^ depth;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "unreachable";
    puts("about to trap");
    fflush(stdout);
    if (strcmp(mode, "div0") == 0)
        printf("%d\n", one / zero);
    else if (strcmp(mode, "stack") == 0)
        printf("%u\n", recurse(0));
    __builtin_trap();
}
