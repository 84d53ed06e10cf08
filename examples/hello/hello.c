/* Prints a fixed greeting: the smallest end-to-end smoke test. */
#include <stdio.h>

int main(void) {
    puts("Hello from WebAssembly!");
    return 0;
}
