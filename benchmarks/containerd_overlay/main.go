// Command containerd_overlay drives containerd 1.6's overlay snapshotter in
// process, the baseline of benchmarks/bench_snapshotter.py (and of
// bench_layers.py's containerd apply). It reads one
// command per line on stdin and answers each with one JSON line on stdout,
// (or runs the one command given as its arguments), so the benchmark can alternate pysnap and containerd round by round while
// this process keeps its snapshotters open. Times are measured here, around
// the calls only (the pipe is not in them):
//
//	chain ROOT N          open a new snapshotter, prepare+commit a chain of N, close: {"ns"}
//	populate ROOT N D     open ROOT and keep it open; N/D chains of D (x<c>-c<i>): {"ns"}
//	stat ROOT REPS KEY..  REPS passes of Stat over the keys: {"ns"}
//	walk ROOT REPS        REPS Walks: {"ns", "count"} (count = snapshots seen per walk)
//	mounts ROOT KEY REPS  REPS Mounts(KEY): {"ns", "lowers"} (lowerdir entries)
//	prepare ROOT KEY PARENT   one Prepare on an open root: {"ns"}
//	apply DIR BLOB        apply a layer blob into DIR as containerd's overlay applier: {"ns", "diff_id"}
//	close ROOT
//
// containerd 1.6's NewSnapshotter takes no durability option: its metadata
// store opens bolt with default options (storage.NewMetaStore), so every
// write transaction ends with bolt's two fdatasyncs.
//
// Build (Debian: golang-go, golang-github-containerd-containerd-dev):
//
//	GO111MODULE=off GOPATH=$tmp:/usr/share/gocode go build -o $tmp/driver .
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay"
)

var ctx = context.Background()
var open = map[string]snapshots.Snapshotter{}

func chain(sn snapshots.Snapshotter, n int, prefix string) error {
	parent := ""
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("%sa%d", prefix, i)
		if _, err := sn.Prepare(ctx, key, parent); err != nil {
			return err
		}
		parent = fmt.Sprintf("%sc%d", prefix, i)
		if err := sn.Commit(ctx, parent, key); err != nil {
			return err
		}
	}
	return nil
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

func run(args []string) (map[string]any, error) {
	out := map[string]any{}
	start := time.Now()
	switch args[0] {
	case "chain":
		sn, err := overlay.NewSnapshotter(args[1])
		if err != nil {
			return nil, err
		}
		start = time.Now()
		if err := chain(sn, atoi(args[2]), ""); err != nil {
			return nil, err
		}
		if err := sn.Close(); err != nil {
			return nil, err
		}
	case "populate":
		sn, err := overlay.NewSnapshotter(args[1])
		if err != nil {
			return nil, err
		}
		open[args[1]] = sn
		depth := atoi(args[3])
		for c := 0; c < atoi(args[2])/depth; c++ {
			if err := chain(sn, depth, fmt.Sprintf("x%d-", c)); err != nil {
				return nil, err
			}
		}
	case "stat":
		sn, keys := open[args[1]], args[3:]
		start = time.Now()
		for r := atoi(args[2]); r > 0; r-- {
			for _, k := range keys {
				if _, err := sn.Stat(ctx, k); err != nil {
					return nil, err
				}
			}
		}
	case "walk":
		sn, count := open[args[1]], 0
		start = time.Now()
		for r := atoi(args[2]); r > 0; r-- {
			count = 0
			if err := sn.Walk(ctx, func(context.Context, snapshots.Info) error {
				count++
				return nil
			}); err != nil {
				return nil, err
			}
		}
		out["count"] = count
	case "mounts":
		sn := open[args[1]]
		lowers := 0
		start = time.Now()
		for r := atoi(args[3]); r > 0; r-- {
			m, err := sn.Mounts(ctx, args[2])
			if err != nil {
				return nil, err
			}
			lowers = len(m)
			for _, o := range m[0].Options {
				if strings.HasPrefix(o, "lowerdir=") {
					lowers = strings.Count(o, ":") + 1
				}
			}
		}
		out["lowers"] = lowers
	case "prepare":
		if _, err := open[args[1]].Prepare(ctx, args[2], args[3]); err != nil {
			return nil, err
		}
	case "apply":
		diffID, err := applyLayer(args[1], args[2])
		if err != nil {
			return nil, err
		}
		out["diff_id"] = diffID
	case "close":
		err := open[args[1]].Close()
		delete(open, args[1])
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown command %q", args[0])
	}
	out["ns"] = time.Since(start).Nanoseconds()
	return out, nil
}

func answer(enc *json.Encoder, args []string) {
	out, err := run(args)
	if err != nil {
		out = map[string]any{"error": err.Error()}
	}
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}

func main() {
	enc := json.NewEncoder(os.Stdout)
	if len(os.Args) > 1 {
		answer(enc, os.Args[1:])
		return
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		if args := strings.Fields(in.Text()); len(args) > 0 {
			answer(enc, args)
		}
	}
}
