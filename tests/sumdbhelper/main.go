// Command sumdbhelper serves a checksum database for the end-to-end tests:
// an in-memory tree of note-signed tree heads (golang.org/x/mod/sumdb) whose
// records are the go.sum lines of the modules in a GOPROXY-layout directory.
//
// It listens on 127.0.0.1 (a free port), names its key after that address,
// prints the verifier key and the URL on two lines of standard output, and
// serves until killed. With -corrupt <module>, the records of that module
// carry a hash of other bytes, so every client must reject its zip. With
// -corrupt-tiles, one byte of every tile it serves is flipped.
//
// With -pad N, the tree holds N made-up records before any lookup (so it
// has full tiles and a second tile level). With -forge <module>, the tree
// records a wrong hash for that module but its lookups answer the right
// go.sum lines under the signed tree head: a record the tree does not
// hold. GET /control/fork?pad=N switches the database to a forked tree
// (signed with the same key, N made-up records of its own first); GET
// /control/tiles lists the tile paths served, "<count> <path>" per line.
// With -vectors, it prints test vectors of golang.org/x/mod/sumdb/tlog as
// JSON and exits.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func main() {
	root := flag.String("root", "", "GOPROXY-layout directory of the modules")
	corrupt := flag.String("corrupt", "", "module whose records carry a wrong hash")
	corruptTiles := flag.Bool("corrupt-tiles", false, "flip a byte of every tile served")
	pad := flag.Int("pad", 0, "made-up records in the tree before any lookup")
	forge := flag.String("forge", "", "module whose lookups answer a record the tree does not hold")
	vectors := flag.Bool("vectors", false, "print tlog test vectors as JSON and exit")
	flag.Parse()
	if *vectors {
		printVectors()
		return
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	name := ln.Addr().String()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		log.Fatal(err)
	}

	// The go.sum lines of path@vers; wrong ones for the -corrupt and
	// -forge modules unless honest.
	lines := func(path, vers string, honest bool) ([]byte, error) {
		if strings.HasPrefix(path, "pad.example/") {
			sum := sha256.Sum256([]byte(path + "@" + vers))
			return []byte(fmt.Sprintf("%s %s h1:%s\n", path, vers, base64.StdEncoding.EncodeToString(sum[:]))), nil
		}
		ep, err := module.EscapePath(path)
		if err != nil {
			return nil, err
		}
		ev, err := module.EscapeVersion(vers)
		if err != nil {
			return nil, err
		}
		base := filepath.Join(*root, filepath.FromSlash(ep), "@v", ev)
		if _, err := os.Stat(base + ".zip"); err != nil {
			return nil, fmt.Errorf("%s@%s: not in this database", path, vers)
		}
		zipHash, err := dirhash.HashZip(base+".zip", dirhash.Hash1)
		if err != nil {
			return nil, err
		}
		modHash, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
			return os.Open(base + ".mod")
		})
		if err != nil {
			return nil, err
		}
		if !honest && (path == *corrupt || path == *forge) {
			zipHash, _ = dirhash.Hash1([]string{"x"}, func(string) (io.ReadCloser, error) {
				return io.NopCloser(strings.NewReader("not the module")), nil
			})
		}
		return []byte(fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", path, vers, zipHash, path, vers, modHash)), nil
	}
	gosum := func(path, vers string) ([]byte, error) { return lines(path, vers, false) }
	newTree := func(padPath string, n int) *sumdb.TestServer {
		ts := sumdb.NewTestServer(skey, gosum)
		for i := 0; i < n; i++ {
			v := module.Version{Path: padPath, Version: fmt.Sprintf("v0.0.%d", i)}
			if _, err := ts.Lookup(context.Background(), v); err != nil {
				log.Fatal(err)
			}
		}
		return ts
	}

	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "%s\nhttp://%s\n", vkey, name)
	w.Flush()
	c := &control{honest: sumdb.NewServer(newTree("pad.example/honest", *pad)), tiles: map[string]int{}}
	var h http.Handler = c
	if *forge != "" {
		h = forgeLookups(h, *forge, lines)
	}
	if *corruptTiles {
		h = flipTiles(h)
	}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("/control/tiles", c.listTiles)
	mux.HandleFunc("/control/fork", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("pad"))
		if err != nil || n < 0 {
			http.Error(w, "pad must be a number", http.StatusBadRequest)
			return
		}
		ts := newTree("pad.example/fork", n)
		c.mu.Lock()
		c.fork, c.forkOps = sumdb.NewServer(ts), ts
		c.mu.Unlock()
	})
	log.Fatal(http.Serve(ln, mux))
}

// control serves the honest tree, or once forked the forked one (and the
// honest tree's tiles the forked tree is too small to have, as a server
// showing two timelines would), and counts the tiles served.
type control struct {
	mu      sync.Mutex
	honest  http.Handler
	fork    http.Handler
	forkOps *sumdb.TestServer
	tiles   map[string]int
}

func (c *control) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	db, fork, forkOps := c.honest, c.fork, c.forkOps
	isTile := strings.HasPrefix(r.URL.Path, "/tile/")
	if isTile {
		c.tiles[r.URL.Path[1:]]++
	}
	c.mu.Unlock()
	if fork != nil {
		db = fork
		if isTile && !tileIn(forkOps, r.URL.Path[1:]) {
			db = c.honest
		}
	}
	db.ServeHTTP(w, r)
}

// tileIn reports whether the tree of ts is large enough to hold the tile.
func tileIn(ts *sumdb.TestServer, path string) bool {
	t, err := tlog.ParseTilePath(path)
	if err != nil || t.L < 0 {
		return true
	}
	signed, err := ts.Signed(context.Background())
	if err != nil {
		return true
	}
	lines := strings.SplitN(string(signed), "\n", 3)
	if len(lines) < 2 {
		return true
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return true
	}
	return (t.N<<uint(t.H)+int64(t.W))<<uint(t.H*t.L) <= size
}

func (c *control) listTiles(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var paths []string
	for p := range c.tiles {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		fmt.Fprintf(w, "%d %s\n", c.tiles[p], p)
	}
}

// forgeLookups serves h, with the lookups of module answered with its
// honest go.sum lines in place of the record the tree holds (same record
// id, same signed tree head).
func forgeLookups(h http.Handler, mod string, lines func(string, string, bool) ([]byte, error)) http.Handler {
	ep, err := module.EscapePath(mod)
	if err != nil {
		log.Fatal(err)
	}
	prefix := "/lookup/" + ep + "@"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, ok := strings.CutPrefix(r.URL.Path, prefix)
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		rec := &recorder{header: http.Header{}, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		body := rec.body
		if rec.code == http.StatusOK {
			vers, err1 := module.UnescapeVersion(ev)
			id, _, rest, err2 := tlog.ParseRecord(body)
			honest, err3 := lines(mod, vers, true)
			if err1 != nil || err2 != nil || err3 != nil {
				http.Error(w, "forging failed", http.StatusInternalServerError)
				return
			}
			msg, err := tlog.FormatRecord(id, honest)
			if err != nil {
				http.Error(w, "forging failed", http.StatusInternalServerError)
				return
			}
			body = append(msg, rest...)
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.code)
		w.Write(body)
	})
}

// flipTiles serves h, with the first byte of every successful /tile/
// answer flipped.
func flipTiles(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/tile/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := &recorder{header: http.Header{}, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		body := rec.body
		if rec.code == http.StatusOK && len(body) > 0 {
			body[0] ^= 0xff
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.code)
		w.Write(body)
	})
}

type recorder struct {
	header http.Header
	code   int
	body   []byte
}

func (r *recorder) Header() http.Header  { return r.header }
func (r *recorder) WriteHeader(code int) { r.code = code }
func (r *recorder) Write(b []byte) (int, error) {
	r.body = append(r.body, b...)
	return len(b), nil
}
