// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * The gossip cloner: a TC egress program that turns one UDP datagram into up to 64 copies.
 *
 * User space writes the peer group into the `groups` map (one entry, tagged with the UDP
 * port of the socket that owns it) and sends ONE datagram from that socket to a marker address
 * (config map). On egress this program
 * recognises the marker destination and, in one run, loops over the group:
 *
 *   for each peer i < n:
 *       rewrite destination MAC, IPv4 address and UDP port to peer i,
 *       fix the IPv4 and UDP checksums with the checksum helpers,
 *       if i is not the last peer: bpf_clone_redirect(skb, ifindex, egress)
 *   the original skb, rewritten for the last peer, continues on its way.
 *
 * Iterating instead of recursing (xdp-gossip clones once per run and lets the clone re-enter
 * the hook) avoids the kernel's transmit recursion limit, which stops a recursive cloner at
 * 9-10 copies. Each clone re-enters this hook once, no longer matches the marker and passes.
 *
 * One source, two builds:
 *   libbpf: clang -O2 -g -target bpf -I/usr/include/$(multiarch) -c cloner.c -o cloner.o
 *   bcc:    BPF(text=..., cflags=["-DGOSSIP_BCC"]) (maps declared with bcc's macros)
 *
 * The layouts of cloner_peer, cloner_group, cloner_config and cloner_counters are mirrored by
 * gossip/transport/ebpf.py; change both together.
 */

#ifdef GOSSIP_BCC
#include <uapi/linux/bpf.h>
#else
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#endif

#define CLONER_MAX_PEERS 64

/* Constants from linux/if_ether.h, linux/in.h and linux/pkt_cls.h, spelled out so that both
 * builds need nothing beyond linux/bpf.h. */
#define CL_ETH_P_IP 0x0800
#define CL_IPPROTO_UDP 17
#define CL_TC_ACT_UNSPEC (-1) /* tcx: TCX_NEXT; cls_bpf: continue with the next filter */
#define CL_TC_ACT_SHOT 2

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#define CL_HTONS(x) ((__u16)(x))
#define CL_NTOHS(x) ((__u16)(x))
#else
#define CL_HTONS(x) ((__u16)__builtin_bswap16(x))
#define CL_NTOHS(x) ((__u16)__builtin_bswap16(x))
#endif

/* Offsets in an Ethernet + IPv4 (no options) + UDP frame, as seen at TC egress. */
#define CL_ETH_LEN 14
#define CL_IP_CSUM_OFF (CL_ETH_LEN + 10)
#define CL_IP_DADDR_OFF (CL_ETH_LEN + 16)
#define CL_UDP_OFF (CL_ETH_LEN + 20)
#define CL_UDP_DPORT_OFF (CL_UDP_OFF + 2)
#define CL_UDP_CSUM_OFF (CL_UDP_OFF + 6)

struct cloner_peer {
	__u32 addr; /* IPv4, network byte order */
	__u16 port; /* network byte order */
	__u8 mac[6]; /* next hop: the peer's MAC on this segment, else the gateway's */
};

struct cloner_group {
	__u32 count; /* peers in use, 1..CLONER_MAX_PEERS */
	__u16 owner_port; /* network byte order: the source port of the owning socket */
	__u16 pad;
	struct cloner_peer peers[CLONER_MAX_PEERS];
};

struct cloner_config {
	__u32 marker_addr; /* network byte order; 0 disables the program */
	__u16 marker_port; /* network byte order */
	__u16 pad;
};

/* Per-CPU; user space sums them (last_error: any non-zero one). */
struct cloner_counters {
	__u64 matched; /* marker datagrams seen */
	__u64 copies; /* copies that left this program (clones + rewritten originals) */
	__u64 cloned; /* successful bpf_clone_redirect calls */
	__u64 clone_failed; /* failed bpf_clone_redirect calls: lost copies */
	__s64 last_error; /* the last negative return of a helper */
	__u64 no_group; /* marker datagrams from a port without a group */
	__u64 bad_packet; /* marker datagrams we cannot rewrite (IP options, fragments) */
	__u64 rewrite_failed; /* a rewrite helper failed: the copy was dropped */
};

/* The headers we read, copied to the stack with bpf_skb_load_bytes (no packet pointers:
 * they would be invalidated by every helper that changes the packet). */
struct cloner_hdr {
	__u8 eth_dst[6];
	__u8 eth_src[6];
	__u16 eth_proto;
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 ip_check;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u16 ulen;
	__u16 udp_check;
} __attribute__((packed));

#ifdef GOSSIP_BCC
BPF_ARRAY(groups, struct cloner_group, 1);
BPF_ARRAY(config, struct cloner_config, 1);
BPF_PERCPU_ARRAY(counters, struct cloner_counters, 1);
#define CL_SEC(name)
#else
/* One group, updated in place (an array update is a copy; a hash update allocates). That is
 * safe because each transport loads its own program and maps and the program reads the group
 * only while the owner's sendto() runs, in the owner's thread: user space never writes the
 * group while this program reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cloner_group);
} groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cloner_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cloner_counters);
} counters SEC(".maps");
#define CL_SEC(name) SEC(name)
#endif

/* Map lookups: bcc rewrites `map.lookup()` calls but refuses them inside macros, so each map
 * gets a small accessor with both spellings. */
static __always_inline struct cloner_config *cl_config(void)
{
	__u32 zero = 0;
#ifdef GOSSIP_BCC
	return config.lookup(&zero);
#else
	return bpf_map_lookup_elem(&config, &zero);
#endif
}

static __always_inline struct cloner_counters *cl_counters(void)
{
	__u32 zero = 0;
#ifdef GOSSIP_BCC
	return counters.lookup(&zero);
#else
	return bpf_map_lookup_elem(&counters, &zero);
#endif
}

static __always_inline struct cloner_group *cl_group(void)
{
	__u32 zero = 0;
#ifdef GOSSIP_BCC
	return groups.lookup(&zero);
#else
	return bpf_map_lookup_elem(&groups, &zero);
#endif
}

/* Rewrite the destination of the frame in `skb` from (*cur_addr, *cur_port) to `peer`.
 * Returns 0, or the helpers' negative errors OR-ed together (exact when one failed).
 *
 * No branches between the helper calls: each branch would double the states the verifier
 * explores in each of the 64 loop iterations (load time: 23 ms with them, 14 without). Rewriting
 * an address or port to the value it already has is a no-op for the checksums. */
static __always_inline int cloner_rewrite(struct __sk_buff *skb, const struct cloner_peer *peer,
					  __u16 sport, __u32 *cur_addr, __u16 *cur_port)
{
	/* Copy the peer to the stack first: helpers take stack pointers. The destination
	 * address and both ports are adjacent (IPv4 daddr, UDP source and destination port):
	 * one store writes them, the source port unchanged. */
	struct {
		__u32 addr;
		__u16 sport;
		__u16 dport;
	} dst = { peer->addr, sport, peer->port };
	__u8 mac[6];
	int ret;

	__builtin_memcpy(mac, peer->mac, sizeof(mac));
	ret = bpf_skb_store_bytes(skb, 0, mac, sizeof(mac), 0);
	/* The address is part of the UDP pseudo-header: BPF_F_PSEUDO_HDR. A zero UDP checksum
	 * means "none" and must stay zero; a computed zero is sent as 0xffff:
	 * BPF_F_MARK_MANGLED_0. */
	ret |= bpf_l4_csum_replace(skb, CL_UDP_CSUM_OFF, *cur_addr, dst.addr,
				   BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(dst.addr));
	ret |= bpf_l3_csum_replace(skb, CL_IP_CSUM_OFF, *cur_addr, dst.addr, sizeof(dst.addr));
	ret |= bpf_l4_csum_replace(skb, CL_UDP_CSUM_OFF, *cur_port, dst.dport,
				   BPF_F_MARK_MANGLED_0 | sizeof(dst.dport));
	ret |= bpf_skb_store_bytes(skb, CL_IP_DADDR_OFF, &dst, sizeof(dst), 0);
	*cur_addr = dst.addr;
	*cur_port = dst.dport;
	return ret;
}

CL_SEC("tc")
int gossip_cloner(struct __sk_buff *skb)
{
	struct cloner_hdr hdr;
	struct cloner_config *cfg;
	struct cloner_counters *cnt;
	struct cloner_group *group;
	__u32 n, i, cur_addr, failed = 0;
	__u16 cur_port;
	int ret, err = 0;

	if (skb->protocol != CL_HTONS(CL_ETH_P_IP))
		return CL_TC_ACT_UNSPEC;
	cfg = cl_config();
	if (!cfg || cfg->marker_addr == 0)
		return CL_TC_ACT_UNSPEC;
	/* Fast exit for everything that is not a marker datagram (every other packet on the
	 * interface, and each of our own clones, which re-enter this hook): read the destination
	 * address in place when the headers are linear, instead of calling a helper. The check
	 * below on the copied headers rejects exactly the same packets. */
	{
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;

		if (data + CL_IP_DADDR_OFF + sizeof(__u32) <= data_end &&
		    *(__u32 *)(data + CL_IP_DADDR_OFF) != cfg->marker_addr)
			return CL_TC_ACT_UNSPEC;
	}
	if (bpf_skb_load_bytes(skb, 0, &hdr, sizeof(hdr)) < 0)
		return CL_TC_ACT_UNSPEC;
	if (hdr.eth_proto != CL_HTONS(CL_ETH_P_IP) || hdr.daddr != cfg->marker_addr ||
	    hdr.protocol != CL_IPPROTO_UDP)
		return CL_TC_ACT_UNSPEC;
	cnt = cl_counters();
	if (!cnt)
		return CL_TC_ACT_UNSPEC;
	/* Options would move the UDP header; a fragment has no (or a partial) UDP header. A
	 * marker datagram must never leak to the wire, so these are dropped, and counted. */
	if (hdr.ver_ihl != 0x45 || (hdr.frag_off & CL_HTONS(0x3fff)) != 0) {
		cnt->bad_packet++;
		return CL_TC_ACT_SHOT;
	}
	if (hdr.dport != cfg->marker_port)
		return CL_TC_ACT_UNSPEC;
	cnt->matched++;

	group = cl_group();
	if (!group || group->owner_port != hdr.sport) {
		/* Another transport's marker datagram: its own program (next in the chain) clones
		 * it. */
		cnt->no_group++;
		return CL_TC_ACT_UNSPEC;
	}
	n = group->count;
	if (n == 0 || n > CLONER_MAX_PEERS) {
		cnt->no_group++;
		return CL_TC_ACT_SHOT;
	}

	/* Hide what the compiler knows about n (<= CLONER_MAX_PEERS): otherwise it may drop the
	 * `i < CLONER_MAX_PEERS` loop bound as redundant, and the verifier, which does not relate
	 * i to n, then rejects peers[i] as possibly out of range (seen with bcc's clang). */
	asm volatile("" : "+r"(n));
	cur_addr = hdr.daddr;
	cur_port = hdr.dport;
	/* Peers 0 .. n-2 get clones; the loop body has one branch (a failed rewrite), so that
	 * the verifier's walk through the 63 iterations stays short (load time). */
	for (i = 0; i < CLONER_MAX_PEERS - 1; i++) {
		if (i + 1 >= n)
			break;
		ret = cloner_rewrite(skb, &group->peers[i], hdr.sport, &cur_addr, &cur_port);
		if (ret < 0)
			goto rewrite_failed;
		ret = bpf_clone_redirect(skb, skb->ifindex, 0 /* egress */);
		failed += (__u32)ret >> 31; /* ret < 0, without a branch */
		err |= ret;
	}
	/* The last peer gets the original. i <= 62 here; the barrier and mask keep the compiler
	 * from replacing i by an expression of n the verifier cannot bound (bcc's clang). */
	asm volatile("" : "+r"(i));
	i &= CLONER_MAX_PEERS - 1;
	ret = cloner_rewrite(skb, &group->peers[i], hdr.sport, &cur_addr, &cur_port);
	if (ret < 0)
		goto rewrite_failed;
	cnt->cloned += i - failed;
	cnt->copies += i - failed + 1;
	if (failed) {
		cnt->clone_failed += failed;
		cnt->last_error = err; /* exact when all failures had the same errno */
	}
	return CL_TC_ACT_UNSPEC;

rewrite_failed:
	/* The packet is in an unknown state: drop it rather than send it to a half-rewritten
	 * address. The clones already sent are counted. */
	cnt->cloned += i - failed;
	cnt->copies += i - failed;
	cnt->clone_failed += failed;
	cnt->rewrite_failed++;
	cnt->last_error = ret;
	return CL_TC_ACT_SHOT;
}

#ifndef GOSSIP_BCC
char LICENSE[] SEC("license") = "Dual MIT/GPL";
#endif
