package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log"
	"os"

	"golang.org/x/mod/sumdb/tlog"
)

// hashes is a tlog.HashReader over the stored hashes of a tree.
type hashes []tlog.Hash

func (h hashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(h)) {
			return nil, fmt.Errorf("index %d not stored", x)
		}
		out[i] = h[x]
	}
	return out, nil
}

type index struct {
	Index int64  `json:"index"`
	Level int    `json:"level"`
	N     int64  `json:"n"`
	Tile  string `json:"tile"`
}

type tree struct {
	N    int64  `json:"n"`
	Hash string `json:"hash"`
	Text string `json:"text"`
}

type proof struct {
	T     int64    `json:"t"`
	N     int64    `json:"n"`
	Proof []string `json:"proof"`
}

type vectorSet struct {
	Records      []string          `json:"records"`
	RecordHashes []string          `json:"record_hashes"`
	NodeHash     string            `json:"node_hash"`
	Indexes      []index           `json:"indexes"`
	Trees        []tree            `json:"trees"`
	Tiles        map[string]string `json:"tiles"`
	RecordProofs []proof           `json:"record_proofs"`
	TreeProofs   []proof           `json:"tree_proofs"`
}

func strs(hs []tlog.Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.String()
	}
	return out
}

// printVectors prints what golang.org/x/mod/sumdb/tlog computes for a tree
// of 600 records: record and node hashes, stored-hash indexes and their
// tiles, tree hashes and tree notes of several sizes, every tile of those
// trees, and record and tree proofs.
func printVectors() {
	const size = 600
	var v vectorSet
	var stored hashes
	for i := int64(0); i < size; i++ {
		rec := fmt.Sprintf("example.com/m%d v1.0.%d h1:record-%d=\n", i, i, i)
		v.Records = append(v.Records, rec)
		h, err := tlog.StoredHashes(i, []byte(rec), stored)
		if err != nil {
			log.Fatal(err)
		}
		stored = append(stored, h...)
		v.RecordHashes = append(v.RecordHashes, tlog.RecordHash([]byte(rec)).String())
	}
	v.NodeHash = tlog.NodeHash(tlog.RecordHash([]byte(v.Records[0])), tlog.RecordHash([]byte(v.Records[1]))).String()
	for x := int64(0); x < int64(len(stored)); x += 7 {
		l, n := tlog.SplitStoredHashIndex(x)
		v.Indexes = append(v.Indexes, index{x, l, n, tlog.TileForIndex(8, x).Path()})
	}
	v.Tiles = map[string]string{}
	sizes := []int64{1, 2, 3, 4, 5, 7, 8, 9, 100, 255, 256, 257, 300, 511, 512, 513, 600}
	for _, t := range sizes {
		th, err := tlog.TreeHash(t, stored)
		if err != nil {
			log.Fatal(err)
		}
		v.Trees = append(v.Trees, tree{t, th.String(), string(tlog.FormatTree(tlog.Tree{N: t, Hash: th}))})
		for _, tile := range tlog.NewTiles(8, 0, t) {
			data, err := tlog.ReadTileData(tile, stored)
			if err != nil {
				log.Fatal(err)
			}
			v.Tiles[tile.Path()] = base64.StdEncoding.EncodeToString(data)
		}
		for _, n := range []int64{0, 1, 2, 5, t / 2, 255, 256, t - 2, t - 1} {
			if n < 0 || n >= t {
				continue
			}
			p, err := tlog.ProveRecord(t, n, stored)
			if err != nil {
				log.Fatal(err)
			}
			v.RecordProofs = append(v.RecordProofs, proof{t, n, strs(p)})
		}
		for _, n := range []int64{1, 2, 3, t / 2, 255, 256, 257, t - 1, t} {
			if n < 1 || n > t {
				continue
			}
			p, err := tlog.ProveTree(t, n, stored)
			if err != nil {
				log.Fatal(err)
			}
			v.TreeProofs = append(v.TreeProofs, proof{t, n, strs(p)})
		}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(v); err != nil {
		log.Fatal(err)
	}
}
