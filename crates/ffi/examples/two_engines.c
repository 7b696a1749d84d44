/*
 * Two Ferroguard engines in one process, talking WireGuard to each other
 * over two UDP sockets on 127.0.0.1, through the C ABI only.
 *
 * A is configured with the setter functions, B with one UAPI text request.
 * The clock is this program's own (now_ns), advanced by hand, so that two
 * minutes of protocol time pass in an instant. Steps, each checked:
 *   1. handshake and data both ways;
 *   2. a rekey after REKEY_AFTER_TIME (120 s of protocol time);
 *   3. a network change: A moves to a new socket (new port), tells its
 *      engine, and B's traffic finds A at the new port at once;
 *   4. the UAPI get=1 reply shows the new endpoint and the counters.
 * Exits 0 and prints "two_engines: ok" on success, 1 with the reason on
 * failure. scripts/ffi-example.sh builds it with cc and runs it, also under
 * valgrind.
 */
#include "ferroguard.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SECOND 1000000000ull

static void fail(const char *file, int line, const char *what) {
  char reason[256];
  fg_last_error(reason, sizeof reason);
  fprintf(stderr, "two_engines: FAILED at %s:%d: %s (last error: %s)\n", file, line, what,
          reason);
  exit(1);
}
#define CHECK(cond) \
  do {                              \
    if (!(cond)) fail(__FILE__, __LINE__, #cond); \
  } while (0)

struct node {
  const char *name;
  fg_device *dev;
  int sock;
  uint64_t peer;   /* the other node, as this engine's peer */
  uint8_t tun_ip;  /* 10.77.0.<tun_ip> */
  int delivered;   /* IP packets delivered to this node's "tunnel" */
};

static uint64_t now_ns = 5 * SECOND; /* any origin: the ABI anchors on the first call */

static int udp_socket(uint16_t *port) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  CHECK(s >= 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(s, (struct sockaddr *)&sin, sizeof sin) == 0);
  socklen_t len = sizeof sin;
  CHECK(getsockname(s, (struct sockaddr *)&sin, &len) == 0);
  *port = ntohs(sin.sin_port);
  return s;
}

static fg_addr loopback(uint16_t port) {
  fg_addr a = {.family = 4, .port = port, .addr = {127, 0, 0, 1}};
  return a;
}

/* Sends every datagram the engine has for the network. */
static void flush(struct node *n) {
  uint8_t buf[2048];
  size_t len;
  fg_addr to;
  int got;
  while ((got = fg_poll_transmit(n->dev, buf, sizeof buf, &len, &to)) == 1) {
    struct sockaddr_storage ss;
    size_t sslen;
    CHECK(fg_addr_to_sockaddr(&to, &ss, sizeof ss, &sslen) == FG_OK);
    CHECK(sendto(n->sock, buf, len, 0, (struct sockaddr *)&ss, (socklen_t)sslen) == (ssize_t)len);
  }
  CHECK(got == 0);
}

/* Hands every datagram waiting on the socket (up to timeout_ms for the
 * first) to the engine. Returns how many there were. */
static int receive_all(struct node *n, int timeout_ms) {
  int count = 0;
  struct pollfd p = {.fd = n->sock, .events = POLLIN};
  while (poll(&p, 1, count ? 0 : timeout_ms) == 1) {
    uint8_t buf[2048];
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    ssize_t r = recvfrom(n->sock, buf, sizeof buf, 0, (struct sockaddr *)&ss, &sslen);
    CHECK(r >= 0);
    fg_addr from;
    CHECK(fg_addr_from_sockaddr(&ss, sslen, &from) == FG_OK);
    size_t out_len = 0;
    int code = fg_receive_datagram(n->dev, now_ns, &from, buf, (size_t)r, buf, sizeof buf, &out_len);
    CHECK(code >= 0);
    CHECK(code != FG_RECV_DROPPED);
    if (code == FG_RECV_DELIVER) {
      CHECK(out_len >= 20 && buf[0] == 0x45 && buf[19] == n->tun_ip);
      n->delivered++;
    }
    count++;
  }
  return count;
}

/* Moves datagrams both ways until the network is quiet. */
static void pump(struct node *a, struct node *b) {
  for (int round = 0; round < 50; round++) {
    flush(a);
    flush(b);
    if (receive_all(a, 20) + receive_all(b, 20) == 0) return;
  }
  fail(__FILE__, __LINE__, "the engines never went quiet");
}

/* Lets `seconds` of protocol time pass, firing timers as they come due. */
static void advance(struct node *a, struct node *b, int seconds) {
  for (int i = 0; i < seconds; i++) {
    now_ns += SECOND;
    struct node *both[2] = {a, b};
    for (int k = 0; k < 2; k++) {
      uint64_t deadline;
      int armed = fg_poll_timeout(both[k]->dev, &deadline);
      CHECK(armed >= 0);
      if (armed && deadline <= now_ns) CHECK(fg_handle_timeout(both[k]->dev, now_ns) == FG_OK);
    }
    pump(a, b);
  }
}

/* A 60-byte IPv4 packet from `from`'s tunnel address to `to`'s, sent. */
static int send_ip(struct node *from, struct node *to, struct node *other) {
  uint8_t p[60] = {0x45, 0, 0, 60};
  p[8] = 64;
  p[9] = 17;
  memcpy(p + 12, (uint8_t[]){10, 77, 0, from->tun_ip}, 4);
  memcpy(p + 16, (uint8_t[]){10, 77, 0, to->tun_ip}, 4);
  int code = fg_send_packet(from->dev, now_ns, p, sizeof p);
  CHECK(code >= 0);
  pump(from, other);
  return code;
}

static uint64_t handshakes(struct node *n) {
  struct fg_peer_stats s;
  CHECK(fg_peer_get_stats(n->dev, n->peer, &s) == FG_OK);
  return s.handshakes_completed;
}

static void hex(const uint8_t key[32], char out[65]) {
  for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", key[i]);
}

int main(void) {
  uint8_t key_a[32], key_b[32], seed_b[32], pub_a[32], pub_b[32];
  for (int i = 0; i < 32; i++) key_a[i] = (uint8_t)(i + 1), key_b[i] = (uint8_t)(0x80 + i),
                               seed_b[i] = (uint8_t)i;
  uint16_t port_a, port_b;
  struct node a = {.name = "A", .tun_ip = 1}, b = {.name = "B", .tun_ip = 2};
  a.sock = udp_socket(&port_a);
  b.sock = udp_socket(&port_b);

  /* A: a seed from the system, configured with the setters. */
  a.dev = fg_device_new(key_a, NULL);
  b.dev = fg_device_new(key_b, seed_b);
  CHECK(a.dev && b.dev);
  CHECK(fg_device_public_key(a.dev, pub_a) == FG_OK);
  CHECK(fg_device_public_key(b.dev, pub_b) == FG_OK);
  CHECK(fg_peer_add(a.dev, pub_b, &a.peer) == FG_OK);
  fg_addr b_addr = loopback(port_b);
  CHECK(fg_peer_set_endpoint(a.dev, a.peer, &b_addr) == FG_OK);
  CHECK(fg_peer_add_allowed_ip(a.dev, a.peer, "10.77.0.2/32") == FG_OK);
  CHECK(fg_peer_add_allowed_ip(a.dev, a.peer, "not an address") == FG_ERR_INVALID);
  uint8_t psk[32];
  memset(psk, 0x5a, sizeof psk);
  CHECK(fg_peer_set_preshared_key(a.dev, a.peer, psk) == FG_OK);

  /* B: one UAPI request, as `wg set` would send it. */
  char hex_a[65], hex_psk[65], request[512], reply[4096];
  size_t reply_len;
  hex(pub_a, hex_a);
  hex(psk, hex_psk); /* the same preshared key as A's, by the other path */
  snprintf(request, sizeof request,
           "set=1\nlisten_port=%u\npublic_key=%s\npreshared_key=%s\nendpoint=127.0.0.1:%u\n"
           "allowed_ip=10.77.0.1/32\n\n",
           port_b, hex_a, hex_psk, port_a);
  CHECK(fg_uapi(b.dev, now_ns, request, strlen(request), reply, sizeof reply, &reply_len) == FG_OK);
  CHECK(strcmp(reply, "errno=0\n\n") == 0);
  CHECK(fg_peer_add(b.dev, pub_a, &b.peer) == FG_OK); /* finds the peer the request added */

  /* 1. Handshake (started by A's first packet) and data both ways. */
  CHECK(send_ip(&a, &b, &b) == FG_SEND_QUEUED);
  CHECK(b.delivered == 1);
  CHECK(handshakes(&a) == 1 && handshakes(&b) == 1);
  for (int i = 0; i < 10; i++) {
    CHECK(send_ip(&b, &a, &a) == FG_SEND_READY);
    CHECK(send_ip(&a, &b, &b) == FG_SEND_READY);
  }
  CHECK(a.delivered == 10 && b.delivered == 11);
  printf("two_engines: handshake and data both ways\n");

  /* 2. Rekey: 125 s of protocol time later, A's next packet starts a new
   * handshake (its keypair is older than REKEY_AFTER_TIME). */
  advance(&a, &b, 125);
  CHECK(send_ip(&a, &b, &b) == FG_SEND_READY);
  CHECK(handshakes(&a) == 2 && handshakes(&b) == 2);
  CHECK(send_ip(&b, &a, &a) == FG_SEND_READY);
  CHECK(a.delivered == 11 && b.delivered == 12);
  printf("two_engines: rekeyed after 125 s of protocol time\n");

  /* 3. Network change: A's old socket is gone, a new one has a new port. */
  advance(&a, &b, 6); /* past REKEY_TIMEOUT since the rekey's initiation */
  close(a.sock);
  uint16_t new_port_a;
  a.sock = udp_socket(&new_port_a);
  CHECK(new_port_a != port_a);
  CHECK(fg_network_changed(a.dev, now_ns) == FG_OK);
  pump(&a, &b);
  CHECK(handshakes(&a) == 3);
  CHECK(send_ip(&b, &a, &a) == FG_SEND_READY);
  CHECK(a.delivered == 12);
  printf("two_engines: network change, B reaches A at its new port\n");

  /* 4. The configuration as text: B sees A's new endpoint. */
  char expected[64];
  snprintf(expected, sizeof expected, "endpoint=127.0.0.1:%u\n", new_port_a);
  CHECK(fg_uapi(b.dev, now_ns, "get=1\n\n", 7, reply, 8, &reply_len) == FG_ERR_BUFFER_TOO_SMALL);
  CHECK(reply_len > 8 && reply_len < sizeof reply);
  CHECK(fg_uapi(b.dev, now_ns, "get=1\n\n", 7, reply, sizeof reply, &reply_len) == FG_OK);
  CHECK(strstr(reply, expected) != NULL);
  CHECK(strstr(reply, "errno=0\n\n") != NULL);
  memset(reply, 0, sizeof reply); /* it held B's private key */

  /* Errors, not crashes. */
  CHECK(fg_handle_timeout(NULL, now_ns) == FG_ERR_NULL);
  CHECK(fg_peer_remove(a.dev, 12345) == FG_ERR_NO_SUCH_PEER);

  fg_device_free(a.dev);
  fg_device_free(b.dev);
  close(a.sock);
  close(b.sock);
  printf("two_engines: ok\n");
  return 0;
}
