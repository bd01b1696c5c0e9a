// Command sumdbhelper serves a checksum database for the end-to-end tests:
// an in-memory tree of note-signed tree heads (golang.org/x/mod/sumdb) whose
// records are the go.sum lines of the modules in a GOPROXY-layout directory.
//
// It listens on 127.0.0.1 (a free port), names its key after that address,
// prints the verifier key and the URL on two lines of standard output, and
// serves until killed. With -corrupt <module>, the records of that module
// carry a hash of other bytes, so every client must reject its zip. With
// -corrupt-tiles, one byte of every tile it serves is flipped.
package main

import (
	"bufio"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
)

func main() {
	root := flag.String("root", "", "GOPROXY-layout directory of the modules")
	corrupt := flag.String("corrupt", "", "module whose records carry a wrong hash")
	corruptTiles := flag.Bool("corrupt-tiles", false, "flip a byte of every tile served")
	flag.Parse()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	name := ln.Addr().String()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		log.Fatal(err)
	}

	gosum := func(path, vers string) ([]byte, error) {
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
		if path == *corrupt {
			zipHash, _ = dirhash.Hash1([]string{"x"}, func(string) (io.ReadCloser, error) {
				return io.NopCloser(strings.NewReader("not the module")), nil
			})
		}
		return []byte(fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", path, vers, zipHash, path, vers, modHash)), nil
	}

	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "%s\nhttp://%s\n", vkey, name)
	w.Flush()
	var h http.Handler = sumdb.NewServer(sumdb.NewTestServer(skey, gosum))
	if *corruptTiles {
		h = flipTiles(h)
	}
	log.Fatal(http.Serve(ln, h))
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
