package pgsource

import (
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/thinlab/thinlab/internal/pgcluster"
)

// BaseEnv is the agent's environment without libpq variables (only the
// source's parameters may steer the tools) and with u's home.
func BaseEnv(u pgcluster.OSUser) []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		out = append(out, kv)
	}
	home := "/"
	if pu, err := user.LookupId(strconv.Itoa(int(u.UID))); err == nil && pu.HomeDir != "" {
		home = pu.HomeDir
	}
	return append(out, "HOME="+home)
}

// PrivateCopies copies the TLS files named by the source parameters into
// a directory only u reads, so that a tool running as u can use them
// without them being readable by u where they are. The returned cleanup
// removes the copies.
func PrivateCopies(params map[string]string, u pgcluster.OSUser, log *slog.Logger) (map[string]string, func(), error) {
	out := maps.Clone(params)
	var files []string
	for _, k := range []string{"sslrootcert", "sslcert", "sslkey", "sslcrl"} {
		if v := params[k]; v != "" && v != "system" {
			files = append(files, k)
		}
	}
	if len(files) == 0 {
		return out, func() {}, nil
	}
	// Made by root and handed over only when filled: the OS user cannot
	// swap a name for a symlink while root writes.
	dir, err := os.MkdirTemp("", "thinlab-retrieval-*")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() {
		// The copies may hold a private key: say so when one stays behind.
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("removing the copied source TLS files failed; remove the directory by hand", "dir", dir, "err", err)
		}
	}
	for _, k := range files {
		data, err := os.ReadFile(params[k])
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("retrieval.source %s: %w", k, err)
		}
		dst := filepath.Join(dir, k)
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600) //nolint:gosec // G304: a fixed name in the directory MkdirTemp just made, created exclusively without following links
		if err == nil {
			_, err = f.Write(data)
			if err == nil {
				err = f.Chown(int(u.UID), int(u.GID))
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("copy retrieval.source %s for the tools: %w", k, err)
		}
		out[k] = dst
	}
	if err := os.Chown(dir, int(u.UID), int(u.GID)); err != nil {
		cleanup()
		return nil, nil, err
	}
	return out, cleanup, nil
}
