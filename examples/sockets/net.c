// net: a WASI 0.2 sockets client, for trying a container's network.
//
//   net lookup NAME               print NAME's addresses, one per line
//   net connect HOST PORT TEXT    send TEXT and a newline over TCP to
//                                 HOST:PORT (a name or an address), then
//                                 print what comes back until the peer closes
//   net loopback                  listen on 127.0.0.1, connect to it, and
//                                 echo one line: "loopback ok" when it works
//
// Exit codes: 0 done; 2 usage; 3 a socket call failed (its WASI error code
// is printed on stderr). Made a component with the preview 1 adapter, any
// non-zero code reaches the container as 1.
//
// Debian's wasi-libc has no sockets, so the WASI 0.2 functions are imported
// directly here, by their component-model names, with the canonical ABI
// written out by hand; build.sh embeds the world that declares them
// (sockets/world.wit) and wraps the module with the preview 1 command
// adapter, which serves printf and the rest of libc.

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#define TCP "wasi:sockets/tcp@0.2.12"
#define STREAMS "wasi:io/streams@0.2.12"
#define POLL "wasi:io/poll@0.2.12"
#define LOOKUP "wasi:sockets/ip-name-lookup@0.2.12"

typedef int32_t handle;

IMPORT("wasi:sockets/instance-network@0.2.12", "instance-network")
handle instance_network(void);
IMPORT("wasi:sockets/tcp-create-socket@0.2.12", "create-tcp-socket")
void create_tcp_socket(int32_t family, void *ret);

// ip-socket-address, flattened: case, then the ipv6 case's 11 slots (the
// ipv4 case uses the first 5: port, then the 4 address bytes).
#define ADDR_PARAMS                                                                              \
    int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t,    \
        int32_t, int32_t
IMPORT(TCP, "[method]tcp-socket.start-connect")
void tcp_start_connect(handle, handle, ADDR_PARAMS, void *ret);
IMPORT(TCP, "[method]tcp-socket.finish-connect")
void tcp_finish_connect(handle, void *ret);
IMPORT(TCP, "[method]tcp-socket.start-bind")
void tcp_start_bind(handle, handle, ADDR_PARAMS, void *ret);
IMPORT(TCP, "[method]tcp-socket.finish-bind")
void tcp_finish_bind(handle, void *ret);
IMPORT(TCP, "[method]tcp-socket.start-listen")
void tcp_start_listen(handle, void *ret);
IMPORT(TCP, "[method]tcp-socket.finish-listen")
void tcp_finish_listen(handle, void *ret);
IMPORT(TCP, "[method]tcp-socket.accept")
void tcp_accept(handle, void *ret);
IMPORT(TCP, "[method]tcp-socket.local-address")
void tcp_local_address(handle, void *ret);
IMPORT(TCP, "[method]tcp-socket.subscribe")
handle tcp_subscribe(handle);
IMPORT(POLL, "[method]pollable.block")
void pollable_block(handle);
IMPORT(POLL, "[resource-drop]pollable")
void pollable_drop(handle);
IMPORT(STREAMS, "[method]output-stream.blocking-write-and-flush")
void blocking_write_and_flush(handle, const void *, size_t, void *ret);
IMPORT(STREAMS, "[method]input-stream.blocking-read")
void blocking_read(handle, uint64_t, void *ret);
IMPORT(LOOKUP, "resolve-addresses")
void resolve_addresses(handle, const char *, size_t, void *ret);
IMPORT(LOOKUP, "[method]resolve-address-stream.resolve-next-address")
void resolve_next_address(handle, void *ret);
IMPORT(LOOKUP, "[method]resolve-address-stream.subscribe")
handle resolve_subscribe(handle);

// The canonical ABI allocates returned lists (a read's bytes) through this.
__attribute__((export_name("cabi_realloc"))) void *cabi_realloc(void *old, size_t old_size,
                                                                  size_t align, size_t size) {
    (void)old_size;
    (void)align;
    return realloc(old, size);
}

// wasi:sockets/network error-code, in order.
static const char *const ERRORS[] = {
    "unknown", "access-denied", "not-supported", "invalid-argument", "out-of-memory", "timeout",
    "concurrency-conflict", "not-in-progress", "would-block", "invalid-state",
    "new-socket-limit", "address-not-bindable", "address-in-use", "remote-unreachable",
    "connection-refused", "connection-reset", "connection-aborted", "datagram-too-large",
    "name-unresolvable", "temporary-resolver-failure", "permanent-resolver-failure",
};
enum { WOULD_BLOCK = 8 };

static void fail(const char *what, uint8_t code) {
    const char *name = code < sizeof ERRORS / sizeof *ERRORS ? ERRORS[code] : "?";
    fprintf(stderr, "net: %s: %s\n", what, name);
    exit(3);
}

// A `result<_, error-code>` (or one whose error sits at 4): 0 for ok, else
// the error code.
static uint8_t err_at(const uint8_t *ret, int offset) { return ret[0] ? ret[offset] : 0xff; }

static void wait_on(handle pollable) {
    pollable_block(pollable);
    pollable_drop(pollable);
}

// An IPv4 or IPv6 address, as ip-address gives it.
struct ip {
    int v6;
    uint16_t parts[8]; // v4: the 4 bytes
};

static void print_ip(const struct ip *ip) {
    if (!ip->v6) {
        printf("%u.%u.%u.%u\n", ip->parts[0], ip->parts[1], ip->parts[2], ip->parts[3]);
        return;
    }
    for (int i = 0; i < 8; i++)
        printf("%x%s", ip->parts[i], i < 7 ? ":" : "\n");
}

// Resolves `name`; returns how many addresses were written to `out`.
static int lookup(handle net, const char *name, struct ip *out, int max) {
    _Alignas(4) uint8_t ret[24];
    resolve_addresses(net, name, strlen(name), ret);
    if (ret[0])
        fail("resolve-addresses", ret[4]);
    handle stream = *(handle *)(ret + 4);
    int n = 0;
    for (;;) {
        resolve_next_address(stream, ret);
        if (ret[0]) { // err, at offset 2
            if (ret[2] == WOULD_BLOCK) {
                wait_on(resolve_subscribe(stream));
                continue;
            }
            fail("resolve-next-address", ret[2]);
        }
        if (!ret[2]) // none: the end
            return n;
        if (n == max)
            continue;
        struct ip *ip = &out[n++];
        ip->v6 = ret[4];
        for (int i = 0; i < (ip->v6 ? 8 : 4); i++)
            ip->parts[i] = ip->v6 ? *(uint16_t *)(ret + 6 + 2 * i) : ret[6 + i];
    }
}

// Flattens an ip-socket-address into the 12 slots ADDR_PARAMS declares.
#define ADDR_ARGS(a) a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11]
static void flatten(const struct ip *ip, uint16_t port, int32_t a[12]) {
    memset(a, 0, 12 * sizeof *a);
    a[0] = ip->v6;
    a[1] = port;
    if (!ip->v6) {
        for (int i = 0; i < 4; i++)
            a[2 + i] = ip->parts[i];
    } else { // port, flow-info, 8 parts, scope-id
        for (int i = 0; i < 8; i++)
            a[3 + i] = ip->parts[i];
    }
}

static handle new_socket(const struct ip *ip) {
    _Alignas(4) uint8_t ret[8];
    create_tcp_socket(ip->v6, ret);
    if (ret[0])
        fail("create-tcp-socket", ret[4]);
    return *(handle *)(ret + 4);
}

struct streams {
    handle in, out;
};

static struct streams connect_to(handle net, const struct ip *ip, uint16_t port) {
    handle sock = new_socket(ip);
    int32_t a[12];
    flatten(ip, port, a);
    _Alignas(4) uint8_t ret[16];
    tcp_start_connect(sock, net, ADDR_ARGS(a), ret);
    if (ret[0])
        fail("start-connect", ret[1]);
    for (;;) {
        tcp_finish_connect(sock, ret);
        if (!ret[0])
            return (struct streams){*(handle *)(ret + 4), *(handle *)(ret + 8)};
        if (ret[4] != WOULD_BLOCK)
            fail("connect", ret[4]);
        wait_on(tcp_subscribe(sock));
    }
}

static void write_all(handle out, const char *text, size_t len) {
    // blocking-write-and-flush takes at most 4096 bytes at a time.
    while (len > 0) {
        size_t n = len < 4096 ? len : 4096;
        _Alignas(4) uint8_t ret[12];
        blocking_write_and_flush(out, text, n, ret);
        if (ret[0]) {
            fprintf(stderr, "net: write failed\n");
            exit(3);
        }
        text += n;
        len -= n;
    }
}

// Reads until the peer closes, or `stop_at_newline` and a newline came.
static size_t read_some(handle in, char *buf, size_t cap, int stop_at_newline) {
    size_t got = 0;
    while (got < cap) {
        _Alignas(4) uint8_t ret[12];
        blocking_read(in, cap - got, ret);
        if (ret[0]) // stream-error: closed, or failed
            break;
        uint8_t *bytes = *(uint8_t **)(ret + 4);
        size_t n = *(uint32_t *)(ret + 8);
        memcpy(buf + got, bytes, n);
        free(bytes);
        got += n;
        if (stop_at_newline && memchr(buf, '\n', got))
            break;
    }
    return got;
}

static int do_connect(handle net, const char *host, const char *port, const char *text) {
    struct ip ips[8];
    int n = lookup(net, host, ips, 8);
    if (n == 0) {
        fprintf(stderr, "net: %s has no address\n", host);
        return 3;
    }
    struct streams s = connect_to(net, &ips[0], (uint16_t)atoi(port));
    write_all(s.out, text, strlen(text));
    write_all(s.out, "\n", 1);
    static char buf[65536];
    size_t got = read_some(s.in, buf, sizeof buf, 0);
    fwrite(buf, 1, got, stdout);
    return 0;
}

static void check(const char *what, void (*call)(handle, void *), handle sock) {
    _Alignas(4) uint8_t ret[8];
    for (;;) {
        call(sock, ret);
        uint8_t err = err_at(ret, 1);
        if (err == 0xff)
            return;
        if (err != WOULD_BLOCK)
            fail(what, err);
        wait_on(tcp_subscribe(sock));
    }
}

static int do_loopback(handle net) {
    struct ip lo = {0, {127, 0, 0, 1}};
    handle listener = new_socket(&lo);
    int32_t a[12];
    flatten(&lo, 0, a);
    _Alignas(4) uint8_t ret[40];
    tcp_start_bind(listener, net, ADDR_ARGS(a), ret);
    if (ret[0])
        fail("start-bind", ret[1]);
    check("finish-bind", tcp_finish_bind, listener);
    tcp_start_listen(listener, ret);
    if (ret[0])
        fail("start-listen", ret[1]);
    check("finish-listen", tcp_finish_listen, listener);
    tcp_local_address(listener, ret);
    if (ret[0])
        fail("local-address", ret[4]);
    uint16_t port = *(uint16_t *)(ret + 8);

    struct streams client = connect_to(net, &lo, port);
    handle server_in, server_out;
    for (;;) {
        tcp_accept(listener, ret);
        if (!ret[0]) {
            server_in = *(handle *)(ret + 8);
            server_out = *(handle *)(ret + 12);
            break;
        }
        if (ret[4] != WOULD_BLOCK)
            fail("accept", ret[4]);
        wait_on(tcp_subscribe(listener));
    }
    char buf[64];
    write_all(client.out, "loopback ok\n", 12);
    size_t got = read_some(server_in, buf, sizeof buf, 1);
    write_all(server_out, buf, got);
    got = read_some(client.in, buf, sizeof buf, 1);
    fwrite(buf, 1, got, stdout);
    return 0;
}

int main(int argc, char **argv) {
    handle net = instance_network();
    if (argc == 3 && !strcmp(argv[1], "lookup")) {
        struct ip ips[32];
        int n = lookup(net, argv[2], ips, 32);
        for (int i = 0; i < n; i++)
            print_ip(&ips[i]);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "connect"))
        return do_connect(net, argv[2], argv[3], argv[4]);
    if (argc == 2 && !strcmp(argv[1], "loopback"))
        return do_loopback(net);
    fprintf(stderr, "usage: net lookup NAME | net connect HOST PORT TEXT | net loopback\n");
    return 2;
}
