// Package clonebench measures clone-ready latency (create call until the
// clone's user runs a query) on real pools with pgbench databases of
// different sizes, and the agent's memory with 50 clones up. Run it with
// `make bench BENCH=Clone`; THINLAB_BENCH_SCALES overrides the pgbench
// scales (default "100,400", about 1.5 and 6 GiB). Data is generated once
// and cached under /var/tmp/thinlab-bench.
package clonebench
