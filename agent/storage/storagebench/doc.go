// Package storagebench measures the copy-on-write pools on this host: how
// long a snapshot, a clone, and a clone's postgres until it answers a
// query take on btrfs, XFS reflink and ZFS, against a full copy of the
// same data directory. Run it with
//
//	go test -run '^$' -bench Storage -benchtime 1x ./agent/storage/storagebench/
//
// It needs root, PostgreSQL 15 and zfs-fuse (or OpenZFS); the pgbench
// data directory is generated once and cached under /var/tmp/thinlab-bench
// (internal/benchdata).
package storagebench
