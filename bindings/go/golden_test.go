package commvq

// The bindings' golden test (tests/data/golden/golden.txt describes it).
// It needs no environment inside the repository: the golden data is
// ../../tests/data/golden and the library the one pkg-config finds (the one
// the package was built against). COMMVQ_GOLDEN_DIR and COMMVQ_LIBRARY
// override them; COMMVQ_STUB_PARTIAL and COMMVQ_STUB_OTHER_MAJOR name wrong
// libraries to refuse.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

type golden struct {
	dir    string
	values map[string]string
}

func readGolden(t *testing.T, dir string) golden {
	f, err := os.Open(filepath.Join(dir, "golden.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g := golden{dir: dir, values: map[string]string{}}
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, found := strings.Cut(line, "=")
		if !found {
			t.Fatalf("golden.txt: bad line %q", line)
		}
		g.values[strings.TrimSpace(key)] = strings.TrimSpace(value)
	}
	return g
}

func (g golden) text(t *testing.T, key string) string {
	value, ok := g.values[key]
	if !ok {
		t.Fatalf("golden.txt lacks %s", key)
	}
	return value
}

func (g golden) int(t *testing.T, key string) uint32 {
	value, err := strconv.ParseUint(g.text(t, key), 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(value)
}

func (g golden) float(t *testing.T, key string) float64 {
	value, err := strconv.ParseFloat(g.text(t, key), 64)
	if err != nil {
		t.Fatal(err)
	}
	return value
}

func (g golden) floats(t *testing.T, key string, count int) []float32 {
	bytes, err := os.ReadFile(filepath.Join(g.dir, g.text(t, key)))
	if err != nil {
		t.Fatal(err)
	}
	if len(bytes) != 4*count {
		t.Fatalf("%s: %d bytes, want %d", key, len(bytes), 4*count)
	}
	out := make([]float32, count)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(bytes[4*i:]))
	}
	return out
}

func mismatches(t *testing.T, name string, got, want []float32, atol, rtol float64) int {
	bad := 0
	for i := range want {
		diff := math.Abs(float64(got[i]) - float64(want[i]))
		if !(diff <= atol+rtol*math.Abs(float64(want[i]))) {
			if bad < 5 {
				t.Logf("  %s[%d]: got %.9g, want %.9g", name, i, got[i], want[i])
			}
			bad++
		}
	}
	return bad
}

// goldenDir is $COMMVQ_GOLDEN_DIR, else the repository's golden data.
func goldenDir() string {
	if dir := os.Getenv("COMMVQ_GOLDEN_DIR"); dir != "" {
		return dir
	}
	return filepath.Join("..", "..", "tests", "data", "golden")
}

// libraryPath is $COMMVQ_LIBRARY, else libcommvq.so.0 in the libdir of the
// commvq.pc the package was built with, else "" (Open's own default).
func libraryPath(t *testing.T) string {
	if path := os.Getenv("COMMVQ_LIBRARY"); path != "" {
		return path
	}
	out, err := exec.Command("pkg-config", "--variable=libdir", "commvq").Output()
	if err != nil {
		t.Logf("pkg-config --variable=libdir commvq: %v; using the loader's search path", err)
		return ""
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "libcommvq.so.0")
	if _, err := os.Stat(path); err != nil {
		t.Logf("%v; using the loader's search path", err)
		return ""
	}
	return path
}

func expectError(t *testing.T, lib *Library, err error, want Status, fragment string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want %s", err, lib.StatusString(want))
	}
	if !errors.Is(err, want) {
		t.Fatalf("errors.Is(%v, %s) is false", err, want)
	}
	var status Status
	if !errors.As(err, &status) || status != want {
		t.Fatalf("errors.As gives status %d, want %d", status, want)
	}
	if e.Status != want || e.Name != lib.StatusString(want) {
		t.Fatalf("got %s, want %s", e.Name, lib.StatusString(want))
	}
	if e.Message == "" || !strings.Contains(e.Message, fragment) {
		t.Fatalf("message %q does not mention %q", e.Message, fragment)
	}
	t.Logf("%s: %s", e.Name, e.Message)
}

func TestGolden(t *testing.T) {
	dir := goldenDir()
	g := readGolden(t, dir)
	nTokens, nQueries := int(g.int(t, "n_tokens")), int(g.int(t, "n_queries"))
	kvHeads, qHeads, headDim := g.int(t, "n_kv_heads"), g.int(t, "n_q_heads"), g.int(t, "head_dim")
	kv, qo := nTokens*int(kvHeads*headDim), nQueries*int(qHeads*headDim)
	keys, values := g.floats(t, "keys", kv), g.floats(t, "values", kv)
	queries := g.floats(t, "queries", qo)
	wantOut, wantLse := g.floats(t, "out", qo), g.floats(t, "lse", nQueries*int(qHeads))

	lib, err := Open(libraryPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if lib.VersionNumber()/10000 != VersionMajor {
		t.Fatalf("version %d", lib.VersionNumber())
	}
	t.Logf("libcommvq %s from %s", lib.Version(), lib.Path)
	for status, name := range statusNames {
		if got := lib.StatusString(status); got != name || status.Error() != name {
			t.Fatalf("status %d: the library names it %s, the binding %s", status, got, status.Error())
		}
	}

	cb, err := lib.LoadCodebook(filepath.Join(dir, g.text(t, "codebook")))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cb.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.NLayers != g.int(t, "n_layers") || info.NKVHeads != kvHeads || info.NQHeads != qHeads ||
		info.HeadDim != headDim {
		t.Fatalf("codebook shape %+v disagrees with golden.txt", info)
	}
	params := lib.DefaultCacheParams()
	params.MaxSeqs = g.int(t, "max_seqs")
	params.MaxTokens = uint64(g.int(t, "max_tokens"))
	params.BlockTokens = g.int(t, "block_tokens")
	params.Window = g.int(t, "window")
	params.NThreads = g.int(t, "n_threads")
	cache, err := cb.NewCache(params)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	cb.Close() // the cache keeps what it needs
	if _, err := cb.Info(); !errors.Is(err, ErrClosed) {
		t.Fatalf("a closed codebook answered %v, want ErrClosed", err)
	}

	layer, seq := g.int(t, "layer"), g.int(t, "seq")
	if err := cache.Append(layer, seq, keys, values); err != nil {
		t.Fatal(err)
	}
	if length, err := cache.SeqLength(seq); err != nil || length != uint64(nTokens) {
		t.Fatalf("length %d, %v", length, err)
	}
	out := make([]float32, qo)
	lse := make([]float32, nQueries*int(qHeads))
	for i := range out {
		out[i] = float32(math.NaN())
	}
	if err := cache.Attend(layer, seq, queries, out, lse, AttendCausal); err != nil {
		t.Fatal(err)
	}
	atol, rtol := g.float(t, "atol"), g.float(t, "rtol")
	if bad := mismatches(t, "out", out, wantOut, atol, rtol) + mismatches(t, "lse", lse, wantLse, atol, rtol); bad > 0 {
		t.Fatalf("golden mismatch: %d values differ", bad)
	}

	expectError(t, lib, cache.Attend(g.int(t, "n_layers"), seq, queries, out, nil, AttendCausal), ErrOutOfRange, "layer")
	extra := int(g.int(t, "overflow_tokens") * kvHeads * headDim)
	expectError(t, lib, cache.Append(layer, seq, keys[:extra], values[:extra]), ErrCapacity, "")
	if length, _ := cache.SeqLength(seq); length != uint64(nTokens) {
		t.Fatalf("a failed append changed the length to %d", length)
	}
	// A batch that names the sequence twice is refused whole.
	two := int(2 * kvHeads * headDim)
	expectError(t, lib, cache.AppendBatch(layer, []uint32{seq, seq}, keys[:two], values[:two]), ErrInvalidArgument,
		"both name sequence")
	if length, _ := cache.SeqLength(seq); length != uint64(nTokens) {
		t.Fatalf("a refused batch changed the length to %d", length)
	}
	missing := filepath.Join(t.TempDir(), "no-such-codebook.safetensors")
	_, err = lib.LoadCodebook(missing)
	expectError(t, lib, err, ErrIO, missing)

	if err := cache.Attend(layer, seq, queries, out[:1], nil, AttendCausal); !errors.Is(err, ErrShapeMismatch) {
		t.Fatalf("a short output buffer: got %v, want ErrShapeMismatch", err)
	}
	cache.Close()
	cache.Close()
	if _, err := cache.SeqLength(seq); !errors.Is(err, ErrClosed) {
		t.Fatalf("a closed cache answered %v, want ErrClosed", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "libnothing.so")); !errors.Is(err, ErrLoad) {
		t.Fatalf("a missing library: got %v, want ErrLoad", err)
	}

	// Wrong libraries are refused at load time, with the reason.
	for variable, fragment := range map[string]string{"COMMVQ_STUB_PARTIAL": "lacks the symbol commvq_",
		"COMMVQ_STUB_OTHER_MAJOR": "needs major version"} {
		stub := os.Getenv(variable)
		if stub == "" {
			t.Logf("%s not set: that check is skipped", variable)
			continue
		}
		_, err := Open(stub)
		if !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), fragment) {
			t.Fatalf("%s: got %v, want an error saying %q", stub, err, fragment)
		}
		t.Log(err)
	}
}
