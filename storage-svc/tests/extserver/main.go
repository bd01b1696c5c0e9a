// extserver is an independent external-storage server for the tests,
// written from the protocol's description only (NOTES and the external
// backend's documentation), with the Go standard library: modules are kept
// on disk under a root directory, one directory per version, published by a
// rename so a version appears whole or not at all.
//
//	extserver -root DIR -listen 127.0.0.1:0
//
// prints "LISTENING http://ADDR" once it serves.
package main

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

type stat struct {
	InfoSize       int64   `json:"info_size"`
	ModSize        int64   `json:"mod_size"`
	ZipSize        int64   `json:"zip_size"`
	StoredAtUnixMs int64   `json:"stored_at_unix_ms"`
	ZipHash        *string `json:"zip_hash"`
	ModHash        string  `json:"mod_hash"`
}

type server struct{ root string }

func unescape(s string) (string, bool) {
	var b strings.Builder
	bang := false
	for _, r := range s {
		switch {
		case bang:
			if r < 'a' || r > 'z' {
				return "", false
			}
			b.WriteRune(unicode.ToUpper(r))
			bang = false
		case r == '!':
			bang = true
		case r >= 'A' && r <= 'Z':
			return "", false
		default:
			b.WriteRune(r)
		}
	}
	return b.String(), !bang
}

func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'A' && r <= 'Z' {
			b.WriteRune('!')
			b.WriteRune(unicode.ToLower(r))
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func validElem(s string) bool {
	if s == "" || s == "." || s == ".." || strings.HasPrefix(s, ".") {
		return false
	}
	return !strings.ContainsAny(s, "/\\\x00")
}

func validModule(m string) bool {
	if m == "" || strings.HasPrefix(m, "/") || strings.HasSuffix(m, "/") {
		return false
	}
	for _, e := range strings.Split(m, "/") {
		if !validElem(e) {
			return false
		}
	}
	return true
}

// canonical reports whether v is vX.Y.Z[-pre][+incompatible].
func canonical(v string) bool {
	if !strings.HasPrefix(v, "v") {
		return false
	}
	core := v[1:]
	if i := strings.IndexByte(core, '+'); i >= 0 {
		if core[i:] != "+incompatible" {
			return false
		}
		core = core[:i]
	}
	if i := strings.IndexByte(core, '-'); i >= 0 {
		if i == len(core)-1 {
			return false
		}
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || (len(p) > 1 && p[0] == '0') {
			return false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// h1 is the go.sum hash of a set of files: the sha256 of "HEX  NAME\n"
// lines sorted by name.
func h1(files map[string][]byte) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	sum := sha256.New()
	for _, n := range names {
		fmt.Fprintf(sum, "%x  %s\n", sha256.Sum256(files[n]), n)
	}
	return "h1:" + base64.StdEncoding.EncodeToString(sum.Sum(nil))
}

func zipHash(path string) (string, error) {
	r, err := zip.OpenReader(path)
	if err != nil {
		return "", err
	}
	defer r.Close()
	type line struct{ name, hex string }
	var lines []line
	for _, f := range r.File {
		rc, err := f.Open()
		if err != nil {
			return "", err
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return "", err
		}
		lines = append(lines, line{f.Name, fmt.Sprintf("%x", h.Sum(nil))})
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].name < lines[j].name })
	sum := sha256.New()
	for _, l := range lines {
		fmt.Fprintf(sum, "%s  %s\n", l.hex, l.name)
	}
	return "h1:" + base64.StdEncoding.EncodeToString(sum.Sum(nil)), nil
}

func (s *server) versionDir(module, version string) string {
	return filepath.Join(s.root, "modules", filepath.FromSlash(escape(module)), "@v", escape(version))
}

func fail(w http.ResponseWriter, status int, format string, args ...any) {
	http.Error(w, fmt.Sprintf(format, args...), status)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch path {
	case "/healthz":
		w.WriteHeader(http.StatusOK)
		return
	case "/catalog":
		s.catalog(w, r)
		return
	}
	i := strings.LastIndex(path, "/@v/")
	if i < 1 {
		fail(w, http.StatusNotFound, "no route %s", path)
		return
	}
	module, ok := unescape(path[1:i])
	if !ok || !validModule(module) {
		fail(w, http.StatusBadRequest, "bad module path %q", path[1:i])
		return
	}
	file := path[i+len("/@v/"):]
	if file == "list" {
		if r.Method != http.MethodGet {
			fail(w, http.StatusMethodNotAllowed, "method")
			return
		}
		s.list(w, module)
		return
	}
	dot := strings.LastIndexByte(file, '.')
	if dot < 1 {
		fail(w, http.StatusNotFound, "no route %s", path)
		return
	}
	version, ext := file[:dot], file[dot+1:]
	if strings.Contains(version, "!") {
		v, ok := unescape(version)
		if !ok {
			fail(w, http.StatusBadRequest, "bad version %q", version)
			return
		}
		version = v
	}
	if !validElem(version) {
		fail(w, http.StatusBadRequest, "bad version %q", version)
		return
	}
	dir := s.versionDir(module, version)
	switch {
	case r.Method == http.MethodGet && (ext == "info" || ext == "mod" || ext == "stat"):
		name := map[string]string{"info": "info", "mod": "mod", "stat": "stat.json"}[ext]
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			fail(w, http.StatusNotFound, "%s@%s not found", module, version)
			return
		} else if err != nil {
			fail(w, http.StatusInternalServerError, "%v", err)
			return
		}
		w.Write(b)
	case r.Method == http.MethodGet && ext == "zip":
		f, err := os.Open(filepath.Join(dir, "zip"))
		if errors.Is(err, os.ErrNotExist) {
			fail(w, http.StatusNotFound, "%s@%s not found", module, version)
			return
		} else if err != nil {
			fail(w, http.StatusInternalServerError, "%v", err)
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			fail(w, http.StatusInternalServerError, "%v", err)
			return
		}
		w.Header().Set("Content-Type", "application/zip")
		w.Header().Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
		io.Copy(w, f)
	case r.Method == http.MethodPost && ext == "save":
		s.save(w, r, module, version, dir)
	case r.Method == http.MethodDelete && ext == "delete":
		if !exists(filepath.Join(dir, "stat.json")) {
			fail(w, http.StatusNotFound, "%s@%s not found", module, version)
			return
		}
		trash := filepath.Join(s.root, "tmp", fmt.Sprintf("del-%d", time.Now().UnixNano()))
		if err := os.Rename(dir, trash); err != nil {
			fail(w, http.StatusInternalServerError, "%v", err)
			return
		}
		os.RemoveAll(trash)
	default:
		fail(w, http.StatusNotFound, "no route %s %s", r.Method, path)
	}
}

func (s *server) list(w http.ResponseWriter, module string) {
	dir := filepath.Join(s.root, "modules", filepath.FromSlash(escape(module)), "@v")
	entries, _ := os.ReadDir(dir)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, e := range entries {
		v, ok := unescape(e.Name())
		if ok && canonical(v) && exists(filepath.Join(dir, e.Name(), "stat.json")) {
			fmt.Fprintln(w, v)
		}
	}
}

func (s *server) save(w http.ResponseWriter, r *http.Request, module, version, dir string) {
	if !canonical(version) {
		fail(w, http.StatusBadRequest, "%q is not a canonical version", version)
		return
	}
	if exists(dir) {
		fail(w, http.StatusConflict, "%s@%s already exists", module, version)
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		fail(w, http.StatusBadRequest, "not a multipart save: %v", err)
		return
	}
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "save-")
	if err != nil {
		fail(w, http.StatusInternalServerError, "%v", err)
		return
	}
	defer os.RemoveAll(tmp)
	parts := map[string]string{"mod.info": "info", "mod.mod": "mod", "mod.zip": "zip"}
	seen := map[string]bool{}
	for len(seen) < 3 {
		p, err := mr.NextPart()
		if err == io.EOF {
			fail(w, http.StatusBadRequest, "missing parts: got %v", seen)
			return
		} else if err != nil {
			fail(w, http.StatusBadRequest, "malformed multipart: %v", err)
			return
		}
		name, ok := parts[p.FormName()]
		if !ok {
			continue
		}
		if err := writePart(filepath.Join(tmp, name), p); err != nil {
			fail(w, http.StatusBadRequest, "reading %s: %v", p.FormName(), err)
			return
		}
		seen[name] = true
	}
	info, _ := os.ReadFile(filepath.Join(tmp, "info"))
	mod, _ := os.ReadFile(filepath.Join(tmp, "mod"))
	zi, err := os.Stat(filepath.Join(tmp, "zip"))
	if err != nil {
		fail(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if v := r.Header.Get("Modmesh-Zip-Size"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err != nil || n != zi.Size() {
			fail(w, http.StatusBadRequest, "zip of %d bytes, %q announced", zi.Size(), v)
			return
		}
	}
	st := stat{
		InfoSize:       int64(len(info)),
		ModSize:        int64(len(mod)),
		ZipSize:        zi.Size(),
		StoredAtUnixMs: time.Now().UnixMilli(),
		ModHash:        h1(map[string][]byte{"go.mod": mod}),
	}
	if h, err := zipHash(filepath.Join(tmp, "zip")); err == nil {
		st.ZipHash = &h
	}
	if want := r.Header.Get("Modmesh-Zip-Hash"); want != "" {
		if st.ZipHash == nil || *st.ZipHash != want {
			fail(w, http.StatusBadRequest, "zip hash differs from the %s announced", want)
			return
		}
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(tmp, "stat.json"), b, 0o644); err != nil {
		fail(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		fail(w, http.StatusInternalServerError, "%v", err)
		return
	}
	// The rename publishes the version; it fails if another save won.
	if err := os.Rename(tmp, dir); err != nil {
		if exists(dir) {
			fail(w, http.StatusConflict, "%s@%s already exists", module, version)
		} else {
			fail(w, http.StatusInternalServerError, "%v", err)
		}
		return
	}
	w.WriteHeader(http.StatusOK)
}

func writePart(path string, p *multipart.Part) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, p); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type entry struct{ Module, Version string }

func (s *server) catalog(w http.ResponseWriter, r *http.Request) {
	size := 1000
	if v := r.URL.Query().Get("pagesize"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fail(w, http.StatusBadRequest, "bad pagesize")
			return
		}
		if n > 0 {
			size = n
		}
	}
	token := r.URL.Query().Get("token")
	var after *entry
	if token != "" {
		raw, err := base64.RawURLEncoding.DecodeString(token)
		i := strings.LastIndexByte(string(raw), '@')
		if err != nil || !strings.HasPrefix(string(raw), "ext:") || i < 0 {
			fail(w, http.StatusBadRequest, "malformed token %q", token)
			return
		}
		after = &entry{string(raw[4:i]), string(raw[i+1:])}
	}
	prefix := r.URL.Query().Get("prefix")
	var all []entry
	base := filepath.Join(s.root, "modules")
	filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || d.Name() != "@v" {
			return nil
		}
		rel, _ := filepath.Rel(base, filepath.Dir(p))
		module, ok := unescape(filepath.ToSlash(rel))
		if !ok || !strings.HasPrefix(module, prefix) {
			return nil
		}
		vs, _ := os.ReadDir(p)
		for _, v := range vs {
			ver, ok := unescape(v.Name())
			if ok && exists(filepath.Join(p, v.Name(), "stat.json")) {
				all = append(all, entry{module, ver})
			}
		}
		return nil
	})
	sort.Slice(all, func(i, j int) bool {
		if all[i].Module != all[j].Module {
			return all[i].Module < all[j].Module
		}
		return all[i].Version < all[j].Version
	})
	type out struct {
		Module  string `json:"module"`
		Version string `json:"version"`
	}
	page := []out{}
	next := ""
	for _, e := range all {
		if after != nil && (e.Module < after.Module || (e.Module == after.Module && e.Version <= after.Version)) {
			continue
		}
		if len(page) == size {
			last := page[len(page)-1]
			next = base64.RawURLEncoding.EncodeToString([]byte("ext:" + last.Module + "@" + last.Version))
			break
		}
		page = append(page, out{e.Module, e.Version})
	}
	body := map[string]any{"modules": page}
	if next != "" {
		body["next"] = next
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(body)
}

func main() {
	root := flag.String("root", "", "directory to keep modules in")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	if *root == "" {
		fmt.Fprintln(os.Stderr, "-root is required")
		os.Exit(2)
	}
	for _, d := range []string{"modules", "tmp"} {
		if err := os.MkdirAll(filepath.Join(*root, d), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING http://%s\n", l.Addr())
	os.Stdout.Sync()
	if err := http.Serve(l, &server{root: *root}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
