package ship

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/thinlab/thinlab/agent/storage"
)

// ErrHostileEntry is a tar entry ReadTree refuses.
var ErrHostileEntry = errors.New("refused tar entry")

// WriteTree writes the tree below dir as a tar stream (the ShipTar
// format): directories, regular files and symbolic links with their
// modes, owners and times. Other file types (sockets, devices, fifos)
// are left out: a PostgreSQL data directory holds none that matter.
func WriteTree(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		case fi.IsDir(), fi.Mode().IsRegular():
		default:
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path) //nolint:gosec // G304: a file of the pool's own snapshot
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		_ = f.Close() // read only
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// ReadTree unpacks a tar stream of WriteTree into dir (which must exist
// and be empty), refusing anything that could reach outside dir or
// smuggle privileges in: absolute names, "..", entries below a symbolic
// link or below anything the stream did not create as a directory, a
// name given twice, symbolic links that are absolute or contain "..", hard links,
// devices, fifos; setuid, setgid and sticky bits are dropped. Files are
// owned by owner when given, else by the uid and gid of the stream.
// Every file is created with O_EXCL|O_NOFOLLOW. The caller removes dir on
// error.
func ReadTree(ctx context.Context, r io.Reader, dir string, owner *storage.Owner) error {
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	dirs := map[string]bool{".": true}
	seen := map[string]bool{}
	type dirTime struct {
		path string
		hdr  *tar.Header
	}
	var dirTimes []dirTime
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: tar: %v", ErrBadStream, err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if name == "" || strings.HasPrefix(name, "/") || !filepath.IsLocal(name) || filepath.Clean(name) != name {
			return fmt.Errorf("%w: name %q: only relative names inside the snapshot are allowed", ErrHostileEntry, hdr.Name)
		}
		if seen[name] {
			return fmt.Errorf("%w: name %q appears twice", ErrHostileEntry, name)
		}
		seen[name] = true
		if !dirs[filepath.Dir(name)] {
			return fmt.Errorf("%w: %q lies below %q, which the stream did not create as a directory before", ErrHostileEntry, name, filepath.Dir(name))
		}
		path := filepath.Join(dir, name)
		mode := os.FileMode(hdr.Mode).Perm() //nolint:gosec // G115: tar modes are small; only the permission bits are kept
		uid, gid := hdr.Uid, hdr.Gid
		if owner != nil {
			uid, gid = owner.UID, owner.GID
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(path, 0o700); err != nil {
				return err
			}
			dirs[name] = true
			dirTimes = append(dirTimes, dirTime{path, hdr})
		case tar.TypeReg:
			if hdr.Size < 0 {
				return fmt.Errorf("%w: %q has a negative size", ErrHostileEntry, name)
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600) //nolint:gosec // G304: path checked to lie in dir
			if err != nil {
				return err
			}
			err = copyDense(f, tr, hdr.Size, cr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if errors.Is(err, ErrHostileEntry) {
				return fmt.Errorf("%w: %q", err, name)
			}
			if err != nil {
				return fmt.Errorf("%w: %q: %v", ErrBadStream, name, err)
			}
			if err := os.Chmod(path, mode); err != nil {
				return err
			}
			if err := os.Chtimes(path, hdr.AccessTime, hdr.ModTime); err != nil {
				return err
			}
		case tar.TypeSymlink:
			target := hdr.Linkname
			// Relative and only downwards: then every chain of links
			// resolves inside dir too, whatever the other links are.
			if target == "" || filepath.IsAbs(target) || slices.Contains(strings.Split(target, "/"), "..") {
				return fmt.Errorf("%w: symbolic link %q -> %q: only relative links without \"..\" are shipped (a link out of the snapshot, such as a tablespace, is not)", ErrHostileEntry, name, target)
			}
			if err := os.Symlink(target, path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %q is of type %q: only directories, regular files and symbolic links are shipped", ErrHostileEntry, name, string(hdr.Typeflag))
		}
		if err := os.Lchown(path, uid, gid); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeDir {
			if err := os.Chmod(path, mode); err != nil {
				return err
			}
		}
	}
	// Directory times last: creating their entries changed them.
	for _, d := range slices.Backward(dirTimes) {
		if err := os.Chtimes(d.path, d.hdr.AccessTime, d.hdr.ModTime); err != nil {
			return err
		}
	}
	return nil
}

// countingReader counts the bytes read from the stream itself.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// copyDense copies size bytes of an entry, refusing one that yields much
// more than the stream carries: a sparse entry (GNU or PAX sparse map)
// whose holes tar.Reader fills with zeros would otherwise write any
// number of bytes from a few of the stream's.
func copyDense(w io.Writer, r io.Reader, size int64, stream *countingReader) error {
	const chunk, slack = 1 << 20, 64 << 10
	start := stream.n
	var written int64
	for written < size {
		n, err := io.CopyN(w, r, min(chunk, size-written))
		written += n
		if written-(stream.n-start) > slack {
			return fmt.Errorf("%w: sparse entries are not shipped", ErrHostileEntry)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
