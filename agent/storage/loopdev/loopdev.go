// Package loopdev turns an image file into a block device: it creates
// sparse image files and attaches and detaches loop devices with losetup.
// Pools on loop files give tests, benchmarks and the demo a real btrfs or
// XFS filesystem without a spare disk.
package loopdev

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/thinlab/thinlab/internal/command"
)

// CreateImage creates a sparse file of size bytes at path. It refuses to
// overwrite an existing file: an image in use by a mounted filesystem must
// never be truncated.
func CreateImage(path string, size int64) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("image path %q must be absolute", path)
	}
	if size <= 0 {
		return fmt.Errorf("image %s: size must be positive, got %d bytes", path, size)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600) //nolint:gosec // G304: the image path its caller (test, demo) chose; O_EXCL never reuses a file
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path) // best effort: the error below is the one that matters
		return fmt.Errorf("size image %s: %w", path, err)
	}
	return nil
}

// Attach binds image to the first free loop device and returns the device
// path (/dev/loopN).
func Attach(ctx context.Context, r command.Runner, image string) (string, error) {
	if !filepath.IsAbs(image) {
		return "", fmt.Errorf("image path %q must be absolute", image)
	}
	out, err := r.Run(ctx, "losetup", "--find", "--show", "--", image)
	if err != nil {
		return "", fmt.Errorf("attach %s to a loop device (is the loop driver available and a /dev/loopN free?): %w", image, err)
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("losetup --find --show %s printed %q, want /dev/loopN", image, dev)
	}
	return dev, nil
}

// Detach releases a loop device. A device that is no longer attached is
// not an error, so cleanup can call it twice.
func Detach(ctx context.Context, r command.Runner, dev string) error {
	if !strings.HasPrefix(dev, "/dev/loop") {
		return fmt.Errorf("detach %q: not a loop device path", dev)
	}
	_, err := r.Run(ctx, "losetup", "-d", dev)
	var ce *command.Error
	if errors.As(err, &ce) && (strings.Contains(ce.Stderr, "No such device") || strings.Contains(ce.Stderr, "No such device or address")) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach loop device %s: %w", dev, err)
	}
	return nil
}

// DevicesFor lists the loop devices backed by image (`losetup -j`), for
// cleanup and leak checks. A missing image has no devices, unless one
// still holds the deleted file: those are found by name in `losetup -a`.
func DevicesFor(ctx context.Context, r command.Runner, image string) ([]string, error) {
	out, err := r.Run(ctx, "losetup", "-a")
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	return parseList(out, image), nil
}

// parseList reads `losetup -a` lines such as
//
//	/dev/loop0: [65024]:9984429 (/tmp/x/pool.img)
//	/dev/loop1: [65024]:9984430 (/tmp/y/pool.img (deleted))
//
// and returns the devices whose backing file is image.
func parseList(out []byte, image string) []string {
	var devs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		dev, rest, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		open := strings.IndexByte(rest, '(')
		if open < 0 || !strings.HasSuffix(rest, ")") {
			continue
		}
		file := strings.TrimSuffix(rest[open+1:len(rest)-1], " (deleted)")
		if file == image {
			devs = append(devs, dev)
		}
	}
	return devs
}
