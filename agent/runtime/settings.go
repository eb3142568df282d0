package runtime

import "maps"

// DefaultSettings keep a clone small so that dozens fit one host, and fast:
// a clone is disposable, so durability against an OS crash is not worth
// fsyncs (a killed postgres loses nothing with fsync off; only a host crash
// would). Configured clone defaults and a request's extra settings override
// them.
var DefaultSettings = map[string]string{ //nolint:gosec // postgres settings (password_encryption), no credentials
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
		maps.Copy(out, l)
	}
	return out
}
