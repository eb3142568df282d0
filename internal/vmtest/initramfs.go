package vmtest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as an
// initramfs. Written here rather than piped through cpio(1) so the archive
// is built from a list of entries without any shell.
type cpioWriter struct {
	w     io.Writer
	ino   uint32
	err   error
	wrote int64
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.wrote += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.wrote % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) dir(name string) { c.entry(name, modeDir|0o755, nil) }

func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, modeFile|perm, data)
}

func (c *cpioWriter) symlink(name, target string) {
	c.entry(name, modeSymlink|0o777, []byte(target))
}

func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, nil)
	return c.err
}

// resolveModules returns the module files (paths relative to modDir) needed
// to load names, dependencies first, each once. Names use either spelling
// (dm-mod or dm_mod). A name missing from modules.dep is an error unless it
// is built into the kernel (listed in modules.builtin).
func resolveModules(modDir string, names []string) ([]string, error) {
	deps, err := readModulesDep(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if line != "" {
				builtin[moduleName(line)] = true
			}
		}
	}
	byName := map[string]string{}
	for path := range deps {
		byName[moduleName(path)] = path
	}
	var order []string
	seen := map[string]bool{}
	var visit func(path string)
	visit = func(path string) {
		if seen[path] {
			return
		}
		seen[path] = true
		// modules.dep lists every (transitive) dependency; visiting each
		// first gives a valid load order.
		for _, d := range deps[path] {
			visit(d)
		}
		order = append(order, path)
	}
	for _, n := range names {
		key := strings.ReplaceAll(n, "-", "_")
		path, ok := byName[key]
		if !ok {
			if builtin[key] {
				continue
			}
			return nil, fmt.Errorf("kernel module %q is neither in %s/modules.dep nor built in", n, modDir)
		}
		visit(path)
	}
	return order, nil
}

func readModulesDep(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module dependencies: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
	}
	return deps, sc.Err()
}

// moduleName turns kernel/drivers/md/dm-mod.ko(.xz) into dm_mod.
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// buildInitramfs writes an initramfs holding busybox, the modules (loaded
// by /init in the given order) and /init itself.
func buildInitramfs(dst, busybox, modDir string, modules []string, init []byte) error {
	var buf bytes.Buffer
	c := &cpioWriter{w: &buf}
	for _, d := range []string{"bin", "dev", "proc", "sys", "modules", "host", "rw", "newroot"} {
		c.dir(d)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("read busybox (install busybox-static): %w", err)
	}
	c.file("bin/busybox", 0o755, bb)
	c.symlink("bin/sh", "busybox")
	var order []string
	for i, m := range modules {
		if strings.HasSuffix(m, ".xz") || strings.HasSuffix(m, ".zst") || strings.HasSuffix(m, ".gz") {
			return fmt.Errorf("module %s is compressed; busybox insmod needs plain .ko files", m)
		}
		data, err := os.ReadFile(filepath.Join(modDir, m))
		if err != nil {
			return fmt.Errorf("read kernel module: %w", err)
		}
		name := fmt.Sprintf("%02d-%s", i, filepath.Base(m))
		c.file("modules/"+name, 0o644, data)
		order = append(order, name)
	}
	c.file("modules/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	c.file("init", 0o755, init)
	if err := c.close(); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o644)
}
