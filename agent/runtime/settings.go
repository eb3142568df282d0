package runtime

import (
	"fmt"
	"regexp"
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

// forbiddenSettings would break the clone (it must listen on its own port
// and address with the agent's pg_hba.conf) or let it reach outside its
// data directory (archiving, replication, recovery, loading files).
var forbiddenSettings = map[string]string{
	"port":                    "the agent assigns the port from provision.portPool",
	"listen_addresses":        "set provision.listenAddresses in the agent config",
	"data_directory":          "the clone's data directory is fixed",
	"config_file":             "the clone's configuration file is fixed",
	"hba_file":                "the agent writes the clone's pg_hba.conf",
	"ident_file":              "the agent writes the clone's pg_ident.conf",
	"external_pid_file":       "the agent tracks postgres by postmaster.pid",
	"unix_socket_directories": "the agent uses the clone's data directory for its socket",
	"unix_socket_group":       "the agent owns the clone's socket",
	"unix_socket_permissions": "the agent owns the clone's socket",
	"include":                 "include directives are not settings",
	"include_dir":             "include directives are not settings",
	"include_if_exists":       "include directives are not settings",
	"archive_mode":            "a clone never archives WAL",
	"archive_command":         "a clone never archives WAL",
	"archive_library":         "a clone never archives WAL",
	"restore_command":         "a clone never restores WAL from an archive",
	"primary_conninfo":        "a clone never replicates from a primary",
	"primary_slot_name":       "a clone never replicates from a primary",
	"logging_collector":       "the agent captures the clone's log",
	"log_directory":           "the agent captures the clone's log",
	"log_destination":         "the agent captures the clone's log",
	"dynamic_library_path":    "libraries come from the installed PostgreSQL",
	"ssl_cert_file":           "TLS files are not configurable per clone",
	"ssl_key_file":            "TLS files are not configurable per clone",
	"ssl_ca_file":             "TLS files are not configurable per clone",
	"ssl_crl_file":            "TLS files are not configurable per clone",
	"ssl_crl_dir":             "TLS files are not configurable per clone",
}

// settingNameRE is a GUC name, including custom "extension.name" ones.
var settingNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$`)

// ValidateSetting checks one postgres setting requested for a clone. The
// error says why the setting is refused and, where there is one, what to do
// instead.
func ValidateSetting(name, value string) error {
	if !settingNameRE.MatchString(name) || len(name) > 63 {
		return fmt.Errorf("%q is not a PostgreSQL setting name (lowercase letters, digits and '_', optionally \"ext.name\")", name)
	}
	if why, ok := forbiddenSettings[name]; ok {
		return fmt.Errorf("%s cannot be set per clone: %s", name, why)
	}
	if len(value) > 1024 {
		return fmt.Errorf("value is longer than 1024 characters")
	}
	for _, r := range value {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("value contains a control character (newline, tab or similar): give it on one line")
		}
	}
	return nil
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
