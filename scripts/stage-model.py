#!/usr/bin/env python3
"""Where a tunnel's CPU goes, stage by stage, and what that allows on more cores.

Reads two `perf report --stdio --no-children --sort dso,sym` outputs, one of
the sending daemon (A) and one of the receiving daemon (B) of a bulk TCP
transfer, sorts every sampled symbol into a stage of the data path (by name:
see STAGES), and turns the shares into CPU nanoseconds per data packet with
the daemons' measured CPU time and the packets carried. Then a model: which
stages are serial per device, per I/O thread or per flow, and what throughput
those costs allow on N cores, today and with the design of issue #18
(multi-queue TUN, one receive socket per core, sharded engine state).

    stage-model.py --bytes B --mss M --cpu-a SECONDS --cpu-b SECONDS A.txt B.txt

Assumptions (printed with the table): costs per packet do not change with the
core count (no lock contention or cache effects modelled); a stage marked
parallel spreads perfectly; the I/O threads of the two directions do not
share a core with each other or with the application.
"""
import argparse
import re
import sys

# (stage, kernel?, pattern). First match wins; order matters.
STAGES = [
    ("AEAD", False, r"chacha|poly1305|ChaCha|Poly1305|aead|CRYPTO_|aws_lc"),
    ("split (GSO)", False, r"offload::split|SegmentBatch"),
    ("coalesce (GRO)", False, r"offload::coalesce|Coalescer"),
    ("checksum", False, r"packet::checksum"),
    ("engine (locked)", False, r"ferroguard_proto::"),
    ("copy", False, r"memcpy|memmove|memset"),
    ("buffers (alloc/free)", False, r"malloc|free|realloc|cfree"),
    ("locks (user)", False, r"pthread_mutex|__lll_lock|lll_lock|futex|parking_lot|Mutex"),
    ("runtime", False, r"ferroguard::|rayon|crossbeam"),
    ("TUN read/write", True, r"^tun_|tun_get_user|tun_put_user|tun_chr|tun_net|__tun_"),
    ("UDP send", True, r"udp_sendmsg|udp_send_skb|udp_gso|__udp_gso|skb_segment|ip_make_skb|__ip_append|ip_append|"
                       r"ip_output|ip_finish|ip_local_out|__ip_local_out|ip_send_skb|dev_queue_xmit|dev_hard_start|fib_|"
                       r"ip_route|__ip_route|dst_|"
                       r"veth_xmit|sendmmsg|sys_sendmsg|____sys_sendmsg|sock_sendmsg|ip6_output|ip6_finish|udpv6_send"),
    ("UDP receive", True, r"udp_recvmsg|__skb_recv_udp|udp_gro|udp_queue_rcv|__udp4_lib|__udp6_lib|udp_rcv|udpv6_rcv|"
                          r"udp_unicast|ip_rcv|ip_local_deliver|ip6_rcv|ip6_input|netif_receive|__netif_receive|"
                          r"process_backlog|net_rx_action|recvmmsg|sys_recvmsg|veth_poll|napi_|gro_|handle_softirqs|"
                          r"do_softirq|__skb_datagram_iter|skb_copy_datagram"),
    ("host TCP (inner)", True, r"^tcp_|^__tcp|inet_|^ip_queue|__inet"),
    ("copy", True, r"copy_user|copy_to_iter|copy_from_iter|_copy_from_user|_copy_to_user|memcpy|memmove|"
                   r"rep_mov|__check_object_size|__virt_addr_valid|check_heap_object|"
                   r"copy_page|csum_partial"),
    ("wake-ups and waiting", True, r"schedule|futex|ep_poll|epoll|try_to_wake_up|select_task|enqueue_|dequeue_|"
                                   r"finish_task_switch|__switch_to|pick_next|update_curr|native_sched|"
                                   r"default_idle|cpuidle|pv_|hypercall|_raw_spin|queued_spin"),
    ("system call entry", True, r"entry_SYSCALL|syscall_|do_syscall|__x64_sys|exit_to_user|__fget|fdget|fput|"
                                r"vfs_read|vfs_write|ksys_|rw_verify|__fsnotify|security_"),
    ("buffers (alloc/free)", True, r"kmem_cache|kmalloc|kfree|__alloc_skb|skb_release|page_frag|slab|alloc_pages|"
                                   r"free_pages|__free_|skb_free|consume_skb|__build_skb|skb_clone|__kmalloc|"
                                   r"free_unref|rmqueue|__put_page|put_page|get_page_from_freelist|__rcu_read"),
]
OTHER_USER, OTHER_KERNEL = "other (user)", "other (kernel)"

# How today's design runs each stage: "device" = under the one engine lock,
# "parallel" = on the crypto pool, "thread" = on the one I/O thread of that
# direction. With #18 every "thread" stage becomes per flow (a TUN queue and
# a socket per core) and the locked engine steps per peer shard.
TODAY = {"engine (locked)": "device", "AEAD": "parallel"}


def parse(path):
    """[(percent, kernel, symbol)] from perf report --stdio output."""
    rows = []
    line_re = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[([k.])\]\s+(.*\S)\s*$")
    for line in open(path, errors="replace"):
        m = line_re.match(line)
        if m:
            rows.append((float(m.group(1)), m.group(3) == "k", m.group(4)))
    return rows


def classify(kernel, symbol):
    for stage, in_kernel, pattern in STAGES:
        if in_kernel == kernel and re.search(pattern, symbol):
            return stage
    return OTHER_KERNEL if kernel else OTHER_USER


def stage_shares(rows):
    shares = {}
    for percent, kernel, symbol in rows:
        stage = classify(kernel, symbol)
        shares[stage] = shares.get(stage, 0.0) + percent
    total = sum(shares.values()) or 1.0
    return {stage: share / total for stage, share in shares.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=float, required=True, help="payload bytes the transfer carried")
    ap.add_argument("--mss", type=float, default=1368, help="payload bytes per data packet")
    ap.add_argument("--cpu-a", type=float, required=True, help="CPU seconds of the sending daemon")
    ap.add_argument("--cpu-b", type=float, required=True, help="CPU seconds of the receiving daemon")
    ap.add_argument("--cores", default="1,2,4,8,16,64")
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    packets = args.bytes / args.mss
    if packets <= 0:
        sys.exit("stage-model: no packets carried")
    sides = {}
    for name, path, cpu in (("A (sends)", args.a, args.cpu_a), ("B (receives)", args.b, args.cpu_b)):
        rows = parse(path)
        if not rows:
            sys.exit(f"stage-model: no samples in {path}")
        shares = stage_shares(rows)
        sides[name] = {stage: share * cpu * 1e9 / packets for stage, share in shares.items()}
    for name, path in (("A", args.a), ("B", args.b)):
        other = sorted(((p, sym) for p, k, sym in parse(path) if classify(k, sym).startswith("other")),
                       reverse=True)[:6]
        print(f"  {name}'s largest unsorted symbols: " + ", ".join(f"{sym} {p:.1f}%" for p, sym in other))
    stages = sorted({s for costs in sides.values() for s in costs},
                    key=lambda s: -sum(costs.get(s, 0) for costs in sides.values()))
    print(f"  CPU ns per data packet ({args.mss:.0f} payload bytes; {packets:.0f} packets, "
          f"A {args.cpu_a:.2f} s CPU, B {args.cpu_b:.2f} s CPU):")
    print("    %-24s %10s %12s  %s" % ("stage", "A (sends)", "B (receives)", "today"))
    for stage in stages:
        a, b = (sides[n].get(stage, 0.0) for n in sides)
        print("    %-24s %10.0f %12.0f  %s" % (stage, a, b, TODAY.get(stage, "thread")))
    totals = {n: sum(c.values()) for n, c in sides.items()}
    print("    %-24s %10.0f %12.0f" % ("total", *totals.values()))

    def gbit(ns_per_packet):
        return args.mss * 8 / ns_per_packet if ns_per_packet > 0 else float("inf")

    cores = [int(c) for c in args.cores.split(",")]
    print("  Projected goodput, Gbit/s (the slower side bounds; CPU costs as measured here):")
    print("    %-46s" % "cores" + "".join("%8d" % n for n in cores))
    for label, flows, design in (("one flow, today", 1, "today"), ("many flows, today", None, "today"),
                                 ("one flow, #18 design", 1, "18"), ("many flows, #18 design", None, "18")):
        cells = []
        for n in cores:
            worst = float("inf")
            for costs in sides.values():
                total = sum(costs.values())
                locked = costs.get("engine (locked)", 0.0)
                aead = costs.get("AEAD", 0.0)
                thread = total - locked - aead
                if design == "today":
                    # One I/O thread per direction does everything but the
                    # AEAD; the engine lock is taken by that same thread.
                    serial = thread + locked
                    bound = max(serial + aead / max(n, 1) if n > 1 else total, total / n)
                elif flows == 1:
                    # One flow: one TUN queue and one socket, so its I/O is
                    # still one thread, but pipelined: the reader goes on with
                    # the next batch while other cores seal this one.
                    bound = max(thread + locked, total / n) if n > 1 else total
                else:
                    # Many flows spread over queues and sockets; nothing is
                    # serial per device.
                    bound = total / n
                worst = min(worst, gbit(bound))
            cells.append(worst)
        print("    %-46s" % label + "".join("%8.1f" % c for c in cells))
    print("  Model: per-packet CPU as measured on this machine; 'thread' stages run on the one I/O thread of a")
    print("  direction today (per flow with #18), 'device' under the one engine lock, 'parallel' on the crypto")
    print("  pool. No contention, cache or memory-bandwidth effects; each side has its N cores to itself.")


if __name__ == "__main__":
    main()
