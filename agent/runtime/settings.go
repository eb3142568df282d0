package runtime

import (
	"fmt"
	"sort"
	"strings"
)

// DefaultSettings keep a clone small so that dozens fit one host, and fast:
// a clone is disposable, so durability against an OS crash is not worth
// fsyncs (a killed postgres loses nothing with fsync off; only a host crash
// would). Configured clone defaults and a request's extra settings override
// them.
var DefaultSettings = map[string]string{
	"shared_buffers":                  "32MB",
	"max_connections":                 "40",
	"work_mem":                        "4MB",
	"maintenance_work_mem":            "64MB",
	"effective_cache_size":            "512MB",
	"max_worker_processes":            "4",
	"max_parallel_workers":            "2",
	"max_parallel_workers_per_gather": "1",
	"max_wal_size":                    "256MB",
	"min_wal_size":                    "32MB",
	"huge_pages":                      "off",
	"fsync":                           "off",
	"synchronous_commit":              "off",
	"full_page_writes":                "off",
	"logging_collector":               "off",
	"log_destination":                 "stderr",
	"password_encryption":             "scram-sha-256",
	// A clone must never talk to production: no archiving, no replication
	// from a primary.
	"archive_mode": "off",
}

// MergeSettings layers setting maps: later maps override earlier ones.
func MergeSettings(layers ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, l := range layers {
		for k, v := range l {
			out[k] = v
		}
	}
	return out
}

// quoteValue quotes a value for postgresql.conf: single quotes double,
// backslashes escape themselves.
func quoteValue(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `''`)
	return "'" + v + "'"
}

// renderSettings renders settings as postgresql.conf lines, sorted.
func renderSettings(settings map[string]string) string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by the Thinlab agent for this clone; rewritten on every start.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteValue(settings[k]))
	}
	return b.String()
}
