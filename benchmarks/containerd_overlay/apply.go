package main

// The apply baseline of benchmarks/bench_layers.py: a layer blob applied into
// a directory the way containerd 1.6's overlay applier does it
// (diff/apply/apply_linux.go): decompressed by archive/compression, hashed
// for the diff ID as it streams, archive.Apply with overlay whiteouts, and
// the rest of the stream read to its end.

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"

	"github.com/containerd/containerd/archive"
	"github.com/containerd/containerd/archive/compression"
)

func applyLayer(target, blob string) (string, error) {
	f, err := os.Open(blob)
	if err != nil {
		return "", err
	}
	defer f.Close()
	rdr, err := compression.DecompressStream(f)
	if err != nil {
		return "", err
	}
	defer rdr.Close()
	digester := sha256.New()
	tee := io.TeeReader(rdr, digester)
	if _, err := archive.Apply(ctx, target, tee,
		archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)); err != nil {
		return "", err
	}
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(digester.Sum(nil)), nil
}
