package ship_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/ship"
	"github.com/thinlab/thinlab/internal/testenv"
)

func tarOf(t testing.TB, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = 2
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dirH(name string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o700}
}
func fileH(name string, mode int64) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode}
}
func linkH(name, target string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}
}

// TestReadTreeRefusesHostileEntries feeds ReadTree the entries a hostile
// sender could put in a reflink snapshot stream: each is refused and
// nothing is written outside the target directory.
func TestReadTreeRefusesHostileEntries(t *testing.T) {
	testenv.NeedsRoot(t, "root, to give received files their owner")
	cases := map[string][]*tar.Header{
		"absolute name":           {fileH("/etc/evil", 0o644)},
		"dot-dot name":            {fileH("../evil", 0o644)},
		"dot-dot inside":          {dirH("a/"), fileH("a/../../evil", 0o644)},
		"absolute symlink":        {linkH("pg_wal", "/etc")},
		"symlink out":             {linkH("up", "../..")},
		"symlink with dot-dot":    {dirH("d/"), linkH("d/l", "../x")},
		"write through a symlink": {dirH("d/"), linkH("l", "d"), fileH("l/f", 0o644)},
		"name twice":              {fileH("f", 0o644), fileH("f", 0o644)},
		"parent never created":    {fileH("nodir/f", 0o644)},
		"hard link":               {fileH("f", 0o644), {Name: "g", Typeflag: tar.TypeLink, Linkname: "f"}},
		"character device":        {{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}},
		"block device":            {{Name: "sda", Typeflag: tar.TypeBlock, Devmajor: 8, Mode: 0o666}},
		"fifo":                    {{Name: "p", Typeflag: tar.TypeFifo, Mode: 0o666}},
	}
	for name, hdrs := range cases {
		t.Run(name, func(t *testing.T) {
			outer := t.TempDir()
			dir := filepath.Join(outer, "tree")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			err := ship.ReadTree(t.Context(), bytes.NewReader(tarOf(t, hdrs...)), dir, nil)
			if !errors.Is(err, ship.ErrHostileEntry) {
				t.Fatalf("ReadTree: %v, want ErrHostileEntry", err)
			}
			entries, _ := os.ReadDir(outer)
			if len(entries) != 1 {
				t.Errorf("entries next to the target directory: %v, want only tree", entries)
			}
		})
	}

	t.Run("setuid dropped, owner applied", func(t *testing.T) {
		dir := t.TempDir()
		owner := &storage.Owner{UID: 12345, GID: 12346}
		err := ship.ReadTree(t.Context(), bytes.NewReader(tarOf(t, dirH("d/"), fileH("d/suid", 0o4755), linkH("d/l", "suid"))), dir, owner)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(filepath.Join(dir, "d", "suid"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 || st.Mode().Perm() != 0o755 {
			t.Errorf("received file mode %v, want -rwxr-xr-x without setuid", st.Mode())
		}
		if uid, gid := fileOwner(t, filepath.Join(dir, "d", "suid")); uid != owner.UID || gid != owner.GID {
			t.Errorf("received file owned by %d:%d, want the pool's owner %d:%d", uid, gid, owner.UID, owner.GID)
		}
	})
}

func fileOwner(t *testing.T, path string) (int, int) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return int(st.Uid), int(st.Gid)
}

// FuzzReadTree feeds ReadTree arbitrary tar streams (a hostile sender's
// reflink snapshot): it must never panic, write outside its directory,
// keep a setuid/setgid bit, or make a symbolic link that is absolute or
// climbs with "..".
func FuzzReadTree(f *testing.F) {
	f.Add(tarOf(f, dirH("d/"), fileH("d/f", 0o4755), linkH("d/l", "f")))
	f.Add(tarOf(f, fileH("../evil", 0o644)))
	f.Add(tarOf(f, dirH("d/"), linkH("l", "d"), fileH("l/f", 0o644)))
	f.Add(tarOf(f, linkH("up", "../..")))
	f.Add([]byte("not a tar"))
	owner := &storage.Owner{UID: os.Getuid(), GID: os.Getgid()}
	f.Fuzz(func(t *testing.T, stream []byte) {
		outer := t.TempDir()
		dir := filepath.Join(outer, "tree")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = ship.ReadTree(t.Context(), bytes.NewReader(stream), dir, owner) // refusals are fine; what it left is checked
		entries, err := os.ReadDir(outer)
		if err != nil || len(entries) != 1 {
			t.Fatalf("entries next to the target directory: %v %v", entries, err)
		}
		err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeDevice|os.ModeNamedPipe) != 0 {
				t.Errorf("%s kept mode %v", path, fi.Mode())
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				target, err := os.Readlink(path)
				if err != nil {
					return err
				}
				if filepath.IsAbs(target) || slices.Contains(strings.Split(target, "/"), "..") {
					t.Errorf("symbolic link %s -> %s escapes", path, target)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// paxRecord formats one PAX extended header record ("LEN key=value\n").
func paxRecord(k, v string) string {
	s := " " + k + "=" + v + "\n"
	n := len(s) + 2
	for len(fmt.Sprint(n))+len(s) != n {
		n++
	}
	return fmt.Sprint(n) + s
}

// sparseBomb is a tar whose one entry is a PAX (GNU 0.0) sparse file of
// 1 GiB with no data at all: tar.Reader reports a regular file and
// yields 1 GiB of zeros from about 1.5 KiB of stream.
func sparseBomb(t *testing.T) []byte {
	t.Helper()
	pax := paxRecord("GNU.sparse.size", "1073741824") + paxRecord("GNU.sparse.numblocks", "1") + paxRecord("GNU.sparse.offset", "0") + paxRecord("GNU.sparse.numbytes", "0")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "pax", Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(pax)), Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(pax)); err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o600, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	// Turn the first entry into a PAX extended header (Go's writer
	// never writes GNU.sparse records itself).
	b := buf.Bytes()
	b[156] = tar.TypeXHeader
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func TestReadTreeRefusesSparseBomb(t *testing.T) {
	testenv.NeedsRoot(t, "root, to give received files their owner")
	bomb := sparseBomb(t)
	// The stream really is a bomb: tar.Reader inflates it.
	tr := tar.NewReader(bytes.NewReader(bomb))
	hdr, err := tr.Next()
	if err != nil || hdr.Size != 1<<30 || hdr.Typeflag != tar.TypeReg {
		t.Fatalf("crafted sparse header: %v %+v", err, hdr)
	}
	dir := t.TempDir()
	err = ship.ReadTree(t.Context(), bytes.NewReader(bomb), dir, nil)
	if !errors.Is(err, ship.ErrHostileEntry) || !strings.Contains(err.Error(), "sparse") {
		t.Fatalf("ReadTree of a sparse bomb: %v, want ErrHostileEntry naming sparse entries", err)
	}
	if st, err := os.Stat(filepath.Join(dir, "bomb")); err == nil && st.Size() > 1<<21 {
		t.Errorf("the sparse entry wrote %d bytes before it was refused", st.Size())
	}
}
