// A WAGI handler: a plain WASI preview 1 program that answers one HTTP
// request per run, CGI style. The shim runs it per request when the
// container's env sets WASMTIME_WAGI=1: the request's CGI variables are in
// the environment, its body on stdin; headers, a blank line and the body
// go to stdout.
//
// Routes, by PATH_INFO:
//   /env       200, lists the CGI variables the test checks, one per line,
//              and how many requests this instance has answered (always 1)
//   /echo      200 with the request body (read from stdin to its end)
//   /status    418 through a Status header
//   /redirect  a Location header, no status: 302
//   /cookies   two Set-Cookie headers
//   /log       writes "wagi: stderr line" to stderr
//   /framing   claims a content-length of 1 for a longer body (the shim
//              frames the response itself)
//   /noheaders output without a header block (the shim answers 500)
//   /fail      exits with status 3 (the shim answers 500)
//   other      200 "hello from wagi"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int requests; // in this instance

static const char *var(const char *name) {
    const char *v = getenv(name);
    return v ? v : "(unset)";
}

int main(void) {
    requests++;
    const char *path = var("PATH_INFO");
    if (strcmp(path, "/env") == 0) {
        printf("content-type: text/plain\n\n");
        const char *names[] = {"REQUEST_METHOD", "PATH_INFO",      "QUERY_STRING",
                               "SCRIPT_NAME",    "SERVER_NAME",    "SERVER_PORT",
                               "SERVER_PROTOCOL", "REMOTE_ADDR",   "CONTENT_TYPE",
                               "CONTENT_LENGTH", "HTTP_X_TEST",    "HTTP_PROXY",
                               "GREETING",       "WASMTIME_WAGI"};
        for (size_t i = 0; i < sizeof names / sizeof *names; i++)
            printf("%s=%s\n", names[i], var(names[i]));
        printf("requests=%d\n", requests);
    } else if (strcmp(path, "/echo") == 0) {
        printf("content-type: application/octet-stream\r\n\r\n");
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
    } else if (strcmp(path, "/status") == 0) {
        printf("Status: 418 I'm a teapot\ncontent-type: text/plain\n\nteapot\n");
    } else if (strcmp(path, "/redirect") == 0) {
        printf("Location: /elsewhere\n\n");
    } else if (strcmp(path, "/cookies") == 0) {
        printf("content-type: text/plain\nSet-Cookie: a=1\nSet-Cookie: b=2\n\ncookies\n");
    } else if (strcmp(path, "/log") == 0) {
        fprintf(stderr, "wagi: stderr line\n");
        printf("content-type: text/plain\n\nlogged\n");
    } else if (strcmp(path, "/framing") == 0) {
        printf("content-type: text/plain\ncontent-length: 1\nconnection: close\n\nlonger body\n");
    } else if (strcmp(path, "/noheaders") == 0) {
        printf("just text, no header block");
    } else if (strcmp(path, "/fail") == 0) {
        printf("content-type: text/plain\n\n");
        return 3;
    } else {
        printf("content-type: text/plain\n\nhello from wagi\n");
    }
    return 0;
}
