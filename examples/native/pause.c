/*
 * pause: a pod's sandbox container, as a static Linux binary.
 *
 * Kubernetes' own pause image does this: hold the pod's namespaces open by
 * sleeping until SIGTERM or SIGINT, and reap any zombie handed to it. The
 * tests use it so that a pod on the wasmtime handler has a real Linux
 * sandbox, which the shim hands to runc.
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) {
        pause();
    }
}
