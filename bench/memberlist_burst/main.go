// Command memberlist_burst measures how hashicorp/memberlist's TransmitLimitedQueue spreads a
// burst of user messages.
//
// N memberlists run in this one process on 127.0.0.1 (each on its own kernel-chosen UDP/TCP
// port), unencrypted, with the LAN profile except for the gossip interval (-interval). Every
// node's Delegate.GetBroadcasts returns its own TransmitLimitedQueue's GetBroadcasts
// (RetransmitMult -retransmit-mult, default 4). Once all nodes see N members, node 0 calls
// QueueBroadcast M times as fast as it can; every node re-queues each message the first time
// it receives it (as serf does). Each message is -size bytes (default 256) and carries a unique
// sequence number in its first 8 bytes.
//
// The run stops when every receiving node (1..N-1) holds all M messages, when -timeout seconds
// have passed since the first QueueBroadcast, or (unless -settle is 0) when every queue is
// empty and nothing has arrived for -settle seconds: memberlist has no repair path for user
// messages, so nothing can arrive after that.
//
// Build (Debian: golang-go, golang-github-hashicorp-memberlist-dev), offline, GOPATH mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off go build -o memberlist_burst .
//
// The result is one JSON object on stdout (-json) or a short text summary.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// memberlistVersion may be set at build time with -ldflags "-X main.memberlistVersion=...".
// memberlist itself carries no version constant; when unset, the Debian package's version is
// asked of dpkg-query at run time.
var memberlistVersion = ""

const debPackage = "golang-github-hashicorp-memberlist-dev"

// burstMsg is one user message. It is unique, so the queue skips its invalidation scan.
type burstMsg struct{ payload []byte }

func (b *burstMsg) Invalidates(memberlist.Broadcast) bool { return false }
func (b *burstMsg) Message() []byte                       { return b.payload }
func (b *burstMsg) Finished()                             {}
func (b *burstMsg) UniqueBroadcast()                      {}

// node is the delegate of one memberlist and its receive record.
type node struct {
	idx      int
	m        int
	queue    *memberlist.TransmitLimitedQueue
	maxQueue int
	t0       *atomic.Int64 // unix ns of the first QueueBroadcast (0 before the burst)

	mu       sync.Mutex
	recvAt   []int64 // per sequence number: ns after t0 of the first receipt, 0 = never
	distinct int
	dups     int
	foreign  int   // messages that are not ours (wrong size or sequence out of range)
	lastAt   int64 // ns after t0 of the latest new message
}

func (d *node) NodeMeta(int) []byte           { return nil }
func (d *node) LocalState(bool) []byte        { return nil }
func (d *node) MergeRemoteState([]byte, bool) {}
func (d *node) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

func (d *node) NotifyMsg(buf []byte) {
	now := time.Now().UnixNano()
	if len(buf) < 8 {
		d.mu.Lock()
		d.foreign++
		d.mu.Unlock()
		return
	}
	seq := binary.BigEndian.Uint64(buf[:8])
	d.mu.Lock()
	if seq >= uint64(d.m) {
		d.foreign++
		d.mu.Unlock()
		return
	}
	if d.recvAt[seq] != 0 {
		d.dups++
		d.mu.Unlock()
		return
	}
	at := now - d.t0.Load()
	if at <= 0 {
		at = 1
	}
	d.recvAt[seq] = at
	d.distinct++
	d.lastAt = at
	d.mu.Unlock()
	// Serf-style: re-broadcast what we first receive. buf is memberlist's; copy it.
	d.enqueue(append([]byte(nil), buf...))
}

func (d *node) enqueue(payload []byte) {
	d.queue.QueueBroadcast(&burstMsg{payload: payload})
	if d.maxQueue > 0 && d.queue.NumQueued() > d.maxQueue {
		d.queue.Prune(d.maxQueue)
	}
}

// logCounter counts memberlist's log lines and optionally forwards them.
type logCounter struct {
	mu          sync.Mutex
	lines       int
	warn        int
	errs        int
	handlerFull int
	forward     io.Writer
}

func (l *logCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		line := sc.Text()
		l.lines++
		switch {
		case strings.Contains(line, "handler queue full"):
			l.handlerFull++
			l.warn++
		case strings.Contains(line, "[WARN]"):
			l.warn++
		case strings.Contains(line, "[ERR]"):
			l.errs++
		}
	}
	if l.forward != nil {
		return l.forward.Write(p)
	}
	return len(p), nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// udpDrops sums the kernel drop counters of the IPv4 UDP sockets bound to 127.0.0.1 on ports.
func udpDrops(ports map[int]bool) (int64, bool) {
	data, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return 0, false
	}
	var total int64
	for i, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 13 {
			continue
		}
		addr := strings.Split(f[1], ":")
		if len(addr) != 2 || addr[0] != "0100007F" {
			continue
		}
		port, err := strconv.ParseInt(addr[1], 16, 32)
		if err != nil || !ports[int(port)] {
			continue
		}
		drops, err := strconv.ParseInt(f[12], 10, 64)
		if err == nil {
			total += drops
		}
	}
	return total, true
}

func version() string {
	if memberlistVersion != "" {
		return memberlistVersion
	}
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", debPackage).Output()
	if err != nil || len(out) == 0 {
		return "unknown"
	}
	return debPackage + " " + strings.TrimSpace(string(out))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	m := xs[0]
	for _, x := range xs[1:] {
		if x < m {
			m = x
		}
	}
	return m
}

func round(x float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	if x >= 0 {
		return float64(int64(x*p+0.5)) / p
	}
	return -float64(int64(-x*p+0.5)) / p
}

type result struct {
	N                 int      `json:"n"`
	M                 int      `json:"m"`
	IntervalMs        float64  `json:"interval_ms"`
	MsgBytes          int      `json:"msg_bytes"`
	RetransmitMult    int      `json:"retransmit_mult"`
	RetransmitLimit   int      `json:"retransmit_limit"`
	MaxQueue          int      `json:"max_queue"`
	DeliveredMin      int      `json:"delivered_min"`
	DeliveredMedian   float64  `json:"delivered_median"`
	DeliveredFraction float64  `json:"delivered_fraction"`
	DeliveredPerNode  []int    `json:"delivered_per_node"`
	HeldByAll         int      `json:"held_by_all"`
	DuplicatesMedian  float64  `json:"duplicates_median"`
	DuplicatesTotal   int      `json:"duplicates_total"`
	Foreign           int      `json:"foreign_messages"`
	CompleteS         *float64 `json:"time_to_complete_s"`
	AllHeldLastS      float64  `json:"held_by_all_last_s"`
	SustainedRate     float64  `json:"sustained_rate_msgs"`
	NodeRateMin       float64  `json:"node_rate_min_msgs"`
	NodeRateMedian    float64  `json:"node_rate_median_msgs"`
	NodeLastMedianS   float64  `json:"node_last_median_s"`
	NodeLastMaxS      float64  `json:"node_last_max_s"`
	QueueCallsS       float64  `json:"queue_calls_s"`
	ElapsedS          float64  `json:"elapsed_s"`
	StopReason        string   `json:"stop_reason"`
	CPUBurstS         float64  `json:"cpu_s"`
	CPUTotalS         float64  `json:"cpu_total_s"`
	MembersMinAtEnd   int      `json:"members_min_at_end"`
	JoinS             float64  `json:"join_s"`
	HandlerQueueFull  int      `json:"log_handler_queue_full"`
	LogWarn           int      `json:"log_warn"`
	LogErr            int      `json:"log_err"`
	UDPDrops          *int64   `json:"udp_kernel_drops"`
	MemberlistVersion string   `json:"memberlist_version"`
	GoVersion         string   `json:"go_version"`
	GOMAXPROCS        int      `json:"gomaxprocs"`
}

func main() {
	n := flag.Int("n", 3, "number of nodes")
	m := flag.Int("m", 10000, "number of messages node 0 queues")
	interval := flag.Duration("interval", 5*time.Millisecond, "gossip interval (LAN default is 200ms)")
	timeout := flag.Float64("timeout", 60, "seconds after the first QueueBroadcast to give up")
	settle := flag.Float64("settle", 2, "stop once every queue is empty and nothing arrived for this many seconds (0: never)")
	size := flag.Int("size", 256, "message size in bytes (>= 8)")
	mult := flag.Int("retransmit-mult", 4, "TransmitLimitedQueue.RetransmitMult")
	maxQueue := flag.Int("max-queue", 0, "prune each queue to this depth, as serf does at 4096 (0: never)")
	asJSON := flag.Bool("json", false, "print one JSON object")
	verbose := flag.Bool("v", false, "forward memberlist's log to stderr")
	flag.Parse()
	if *n < 2 || *m < 1 || *size < 8 || *interval <= 0 {
		fmt.Fprintln(os.Stderr, "need -n >= 2, -m >= 1, -size >= 8, -interval > 0")
		os.Exit(2)
	}

	cpuStart := cpuSeconds()
	logs := &logCounter{}
	if *verbose {
		logs.forward = os.Stderr
	}
	logger := log.New(logs, "", log.LstdFlags)

	var t0 atomic.Int64
	nodes := make([]*node, *n)
	lists := make([]*memberlist.Memberlist, *n)
	ports := map[int]bool{}
	joinStart := time.Now()
	for i := 0; i < *n; i++ {
		d := &node{idx: i, m: *m, maxQueue: *maxQueue, t0: &t0, recvAt: make([]int64, *m)}
		i := i
		d.queue = &memberlist.TransmitLimitedQueue{
			NumNodes:       func() int { return lists[i].NumMembers() },
			RetransmitMult: *mult,
		}
		nodes[i] = d
		cfg := memberlist.DefaultLANConfig()
		cfg.Name = fmt.Sprintf("node-%d", i)
		cfg.BindAddr = "127.0.0.1"
		cfg.BindPort = 0
		cfg.GossipInterval = *interval
		cfg.Delegate = d
		cfg.Logger = logger
		ml, err := memberlist.Create(cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "create node %d: %v\n", i, err)
			os.Exit(1)
		}
		lists[i] = ml
		ports[int(ml.LocalNode().Port)] = true
		if i > 0 {
			if _, err := ml.Join([]string{lists[0].LocalNode().FullAddress().Addr}); err != nil {
				fmt.Fprintf(os.Stderr, "join node %d: %v\n", i, err)
				os.Exit(1)
			}
		}
	}
	joinDeadline := time.Now().Add(60 * time.Second)
	for {
		ok := true
		for _, ml := range lists {
			if ml.NumMembers() != *n {
				ok = false
				break
			}
		}
		if ok {
			break
		}
		if time.Now().After(joinDeadline) {
			fmt.Fprintln(os.Stderr, "cluster did not converge to N members within 60 s")
			os.Exit(1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	joinS := time.Since(joinStart).Seconds()
	// Let the join's own gossip (alive messages) drain before the burst.
	time.Sleep(20 * *interval)

	payloads := make([][]byte, *m)
	for s := 0; s < *m; s++ {
		p := make([]byte, *size)
		binary.BigEndian.PutUint64(p[:8], uint64(s))
		for j := 8; j < *size; j++ {
			p[j] = byte(s + j)
		}
		payloads[s] = p
	}
	// Node 0 already holds every message: mark them so echoes count as duplicates.
	for s := range nodes[0].recvAt {
		nodes[0].recvAt[s] = -1
	}

	cpuBurst0 := cpuSeconds()
	start := time.Now()
	t0.Store(start.UnixNano())
	for s := 0; s < *m; s++ {
		nodes[0].enqueue(payloads[s])
	}
	queueCalls := time.Since(start)

	deadline := start.Add(time.Duration(*timeout * float64(time.Second)))
	stopReason := "timeout"
	lastTotal, lastChange := -1, time.Now()
	for time.Now().Before(deadline) {
		total, done := 0, true
		for _, d := range nodes[1:] {
			d.mu.Lock()
			total += d.distinct
			if d.distinct < *m {
				done = false
			}
			d.mu.Unlock()
		}
		if done {
			stopReason = "complete"
			break
		}
		if total != lastTotal {
			lastTotal, lastChange = total, time.Now()
		} else if *settle > 0 && time.Since(lastChange).Seconds() >= *settle {
			empty := true
			for _, d := range nodes {
				if d.queue.NumQueued() > 0 {
					empty = false
					break
				}
			}
			if empty {
				stopReason = "quiescent"
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cpuEnd := cpuSeconds()
	var drops *int64
	if v, ok := udpDrops(ports); ok {
		drops = &v
	}
	membersMin := *n
	for _, ml := range lists {
		if k := ml.NumMembers(); k < membersMin {
			membersMin = k
		}
	}

	// Snapshot the receivers.
	recv := nodes[1:]
	delivered := make([]int, len(recv))
	deliveredF := make([]float64, len(recv))
	dupsF := make([]float64, len(recv))
	lastF := make([]float64, len(recv))
	rates := make([]float64, len(recv))
	dupTotal, foreign := 0, 0
	heldByAll, allHeldLast := 0, int64(0)
	for _, d := range recv {
		d.mu.Lock()
	}
	for i, d := range recv {
		delivered[i] = d.distinct
		deliveredF[i] = float64(d.distinct)
		dupsF[i] = float64(d.dups)
		dupTotal += d.dups
		foreign += d.foreign
		lastF[i] = float64(d.lastAt) / 1e9
		if d.lastAt > 0 {
			rates[i] = float64(d.distinct) / (float64(d.lastAt) / 1e9)
		}
	}
	for s := 0; s < *m; s++ {
		var last int64
		all := true
		for _, d := range recv {
			at := d.recvAt[s]
			if at == 0 {
				all = false
				break
			}
			if at > last {
				last = at
			}
		}
		if all {
			heldByAll++
			if last > allHeldLast {
				allHeldLast = last
			}
		}
	}
	for _, d := range recv {
		d.mu.Unlock()
	}
	logs.mu.Lock()
	hFull, lWarn, lErr := logs.handlerFull, logs.warn, logs.errs
	logs.mu.Unlock()

	total := 0
	for _, k := range delivered {
		total += k
	}
	res := result{
		N: *n, M: *m, IntervalMs: float64(*interval) / float64(time.Millisecond),
		MsgBytes: *size, RetransmitMult: *mult, MaxQueue: *maxQueue,
		RetransmitLimit:  *mult * int(ceilLog10(*n+1)),
		DeliveredPerNode: delivered, HeldByAll: heldByAll,
		DuplicatesMedian: median(dupsF), DuplicatesTotal: dupTotal, Foreign: foreign,
		QueueCallsS: round(queueCalls.Seconds(), 4), ElapsedS: round(elapsed.Seconds(), 3),
		StopReason: stopReason, CPUBurstS: round(cpuEnd-cpuBurst0, 3),
		CPUTotalS: round(cpuEnd-cpuStart, 3), MembersMinAtEnd: membersMin,
		JoinS: round(joinS, 3), HandlerQueueFull: hFull, LogWarn: lWarn, LogErr: lErr,
		UDPDrops: drops, MemberlistVersion: version(), GoVersion: runtime.Version(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
	}
	mn := delivered[0]
	for _, k := range delivered {
		if k < mn {
			mn = k
		}
	}
	res.DeliveredMin = mn
	res.DeliveredMedian = median(deliveredF)
	res.DeliveredFraction = round(float64(total)/float64(*m*len(recv)), 6)
	if stopReason == "complete" {
		c := round(float64(allHeldLast)/1e9, 4)
		res.CompleteS = &c
	}
	res.AllHeldLastS = round(float64(allHeldLast)/1e9, 4)
	if allHeldLast > 0 {
		res.SustainedRate = round(float64(heldByAll)/(float64(allHeldLast)/1e9), 1)
	}
	res.NodeRateMin = round(minOf(rates), 1)
	res.NodeRateMedian = round(median(rates), 1)
	res.NodeLastMedianS = round(median(lastF), 4)
	res.NodeLastMaxS = round(maxOf(lastF), 4)

	if *asJSON {
		out, _ := json.Marshal(res)
		fmt.Println(string(out))
	} else {
		fmt.Printf("memberlist %s, %s: N=%d M=%d interval=%v\n", res.MemberlistVersion,
			res.GoVersion, res.N, res.M, *interval)
		fmt.Printf("delivered: min %d, median %.0f of %d (%.2f %%), held by all %d\n",
			res.DeliveredMin, res.DeliveredMedian, res.M, 100*res.DeliveredFraction, res.HeldByAll)
		fmt.Printf("stop: %s after %.2f s; sustained %.0f msg/s to all nodes; per node median %.0f msg/s\n",
			res.StopReason, res.ElapsedS, res.SustainedRate, res.NodeRateMedian)
		fmt.Printf("cpu %.2f s; handler-queue-full %d; UDP drops %v\n", res.CPUBurstS,
			res.HandlerQueueFull, derefOr(res.UDPDrops))
	}
	// Skip the orderly shutdown of N memberlists: the process ends here.
	os.Exit(0)
}

func ceilLog10(x int) float64 {
	// memberlist.retransmitLimit: mult * ceil(log10(n+1)).
	k, p := 0, 1
	for p < x {
		p *= 10
		k++
	}
	return float64(k)
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		if x > m {
			m = x
		}
	}
	return m
}

func derefOr(p *int64) string {
	if p == nil {
		return "n/a"
	}
	return strconv.FormatInt(*p, 10)
}
