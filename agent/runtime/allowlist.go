package runtime

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
)

// settingKind is the type of a setting's value, as PostgreSQL describes it
// (postgres --describe-config); it decides which values are accepted.
type settingKind int

const (
	kindBool   settingKind = iota
	kindNum                // INTEGER or REAL, with an optional unit
	kindEnum               // one word
	kindString             // free text on one line
)

// cloneSettings is the allowlist of postgres settings a clone request's
// extra_conf may change: planner, memory, parallelism, timeouts,
// checkpoints, vacuum, statistics and logging that names no file or
// program. Anything else (every *_preload_libraries, jit_provider,
// ssl_passphrase_command, recovery_end_command, archive and restore
// commands, file locations, ...) is refused: a setting added by a new
// PostgreSQL release stays refused until reviewed here. The list is
// documented in docs/agent-api.md; TestCloneSettingsAreRealSettings checks
// each name and kind against the installed postgres.
var cloneSettings = map[string]settingKind{
	// Planner.
	"enable_async_append": kindBool, "enable_bitmapscan": kindBool, "enable_gathermerge": kindBool,
	"enable_hashagg": kindBool, "enable_hashjoin": kindBool, "enable_incremental_sort": kindBool,
	"enable_indexonlyscan": kindBool, "enable_indexscan": kindBool, "enable_material": kindBool,
	"enable_memoize": kindBool, "enable_mergejoin": kindBool, "enable_nestloop": kindBool,
	"enable_parallel_append": kindBool, "enable_parallel_hash": kindBool, "enable_partition_pruning": kindBool,
	"enable_partitionwise_aggregate": kindBool, "enable_partitionwise_join": kindBool, "enable_seqscan": kindBool,
	"enable_sort": kindBool, "enable_tidscan": kindBool,
	"seq_page_cost": kindNum, "random_page_cost": kindNum, "cpu_tuple_cost": kindNum,
	"cpu_index_tuple_cost": kindNum, "cpu_operator_cost": kindNum, "parallel_setup_cost": kindNum,
	"parallel_tuple_cost": kindNum, "min_parallel_table_scan_size": kindNum, "min_parallel_index_scan_size": kindNum,
	"effective_cache_size": kindNum, "default_statistics_target": kindNum, "constraint_exclusion": kindEnum,
	"cursor_tuple_fraction": kindNum, "from_collapse_limit": kindNum, "join_collapse_limit": kindNum,
	"plan_cache_mode": kindEnum, "recursive_worktable_factor": kindNum,
	"geqo": kindBool, "geqo_threshold": kindNum, "geqo_effort": kindNum, "geqo_pool_size": kindNum,
	"geqo_generations": kindNum, "geqo_selection_bias": kindNum, "geqo_seed": kindNum,
	// JIT on or off and its cost thresholds; never jit_provider (a library).
	"jit": kindBool, "jit_above_cost": kindNum, "jit_inline_above_cost": kindNum, "jit_optimize_above_cost": kindNum,
	// Memory and I/O.
	"shared_buffers": kindNum, "work_mem": kindNum, "maintenance_work_mem": kindNum, "autovacuum_work_mem": kindNum,
	"temp_buffers": kindNum, "hash_mem_multiplier": kindNum, "logical_decoding_work_mem": kindNum,
	"effective_io_concurrency": kindNum, "maintenance_io_concurrency": kindNum, "temp_file_limit": kindNum,
	"wal_buffers": kindNum, "huge_pages": kindEnum,
	"bgwriter_delay": kindNum, "bgwriter_lru_maxpages": kindNum, "bgwriter_lru_multiplier": kindNum,
	"bgwriter_flush_after": kindNum, "backend_flush_after": kindNum,
	// Connections, workers and locks.
	"max_connections": kindNum, "max_worker_processes": kindNum, "max_parallel_workers": kindNum,
	"max_parallel_workers_per_gather": kindNum, "max_parallel_maintenance_workers": kindNum,
	"max_locks_per_transaction": kindNum, "max_pred_locks_per_transaction": kindNum,
	"max_pred_locks_per_relation": kindNum, "max_pred_locks_per_page": kindNum, "max_prepared_transactions": kindNum,
	// Timeouts.
	"statement_timeout": kindNum, "lock_timeout": kindNum, "idle_in_transaction_session_timeout": kindNum,
	"idle_session_timeout": kindNum, "deadlock_timeout": kindNum,
	// WAL and checkpoints (a clone never archives or replicates out).
	"fsync": kindBool, "synchronous_commit": kindEnum, "full_page_writes": kindBool, "wal_compression": kindEnum,
	"wal_level": kindEnum, "wal_writer_delay": kindNum, "wal_writer_flush_after": kindNum,
	"commit_delay": kindNum, "commit_siblings": kindNum, "max_wal_size": kindNum, "min_wal_size": kindNum,
	"checkpoint_timeout": kindNum, "checkpoint_completion_target": kindNum, "checkpoint_warning": kindNum,
	"checkpoint_flush_after": kindNum, "max_wal_senders": kindNum, "max_replication_slots": kindNum,
	"wal_keep_size": kindNum,
	// Vacuum.
	"autovacuum": kindBool, "autovacuum_naptime": kindNum, "autovacuum_max_workers": kindNum,
	"autovacuum_vacuum_threshold": kindNum, "autovacuum_vacuum_scale_factor": kindNum,
	"autovacuum_vacuum_insert_threshold": kindNum, "autovacuum_vacuum_insert_scale_factor": kindNum,
	"autovacuum_analyze_threshold": kindNum, "autovacuum_analyze_scale_factor": kindNum,
	"autovacuum_vacuum_cost_delay": kindNum, "autovacuum_vacuum_cost_limit": kindNum,
	"autovacuum_freeze_max_age": kindNum, "autovacuum_multixact_freeze_max_age": kindNum,
	"vacuum_cost_delay": kindNum, "vacuum_cost_limit": kindNum, "vacuum_cost_page_hit": kindNum,
	"vacuum_cost_page_miss": kindNum, "vacuum_cost_page_dirty": kindNum, "vacuum_freeze_min_age": kindNum,
	"vacuum_freeze_table_age": kindNum, "vacuum_multixact_freeze_min_age": kindNum,
	"vacuum_multixact_freeze_table_age": kindNum, "vacuum_failsafe_age": kindNum,
	"vacuum_multixact_failsafe_age": kindNum,
	// Statistics.
	"track_activities": kindBool, "track_counts": kindBool, "track_io_timing": kindBool,
	"track_wal_io_timing": kindBool, "track_functions": kindEnum, "track_activity_query_size": kindNum,
	"track_commit_timestamp": kindBool, "compute_query_id": kindEnum, "stats_fetch_consistency": kindEnum,
	// Logging to the clone's log (no file names, destinations or programs).
	"log_min_duration_statement": kindNum, "log_min_duration_sample": kindNum, "log_statement_sample_rate": kindNum,
	"log_transaction_sample_rate": kindNum, "log_statement": kindEnum, "log_duration": kindBool,
	"log_lock_waits": kindBool, "log_temp_files": kindNum, "log_checkpoints": kindBool,
	"log_connections": kindBool, "log_disconnections": kindBool, "log_autovacuum_min_duration": kindNum,
	"log_min_messages": kindEnum, "log_min_error_statement": kindEnum, "log_error_verbosity": kindEnum,
	"log_line_prefix": kindString, "log_parameter_max_length": kindNum, "log_parameter_max_length_on_error": kindNum,
	"log_recovery_conflict_waits": kindBool, "log_replication_commands": kindBool,
	"log_startup_progress_interval": kindNum, "log_timezone": kindString, "log_parser_stats": kindBool,
	"log_planner_stats": kindBool, "log_executor_stats": kindBool, "log_statement_stats": kindBool,
	"client_min_messages": kindEnum,
	// Client defaults.
	"timezone": kindString, "datestyle": kindString, "intervalstyle": kindEnum, "lc_messages": kindString,
	"lc_monetary": kindString, "lc_numeric": kindString, "lc_time": kindString,
	"default_text_search_config": kindString, "extra_float_digits": kindNum, "bytea_output": kindEnum,
	"xmlbinary": kindEnum, "xmloption": kindEnum, "standard_conforming_strings": kindBool,
	"escape_string_warning": kindBool, "array_nulls": kindBool, "backslash_quote": kindEnum,
	"quote_all_identifiers": kindBool, "transform_null_equals": kindBool,
	"default_transaction_isolation": kindEnum, "default_transaction_read_only": kindBool,
	"default_transaction_deferrable": kindBool, "search_path": kindString, "row_security": kindBool,
	"check_function_bodies": kindBool, "default_toast_compression": kindEnum,
	"gin_pending_list_limit": kindNum, "gin_fuzzy_search_limit": kindNum,
	"default_tablespace": kindString, "temp_tablespaces": kindString,
	// pg_stat_statements, when the operator preloads it.
	"pg_stat_statements.max": kindNum, "pg_stat_statements.track": kindEnum,
	"pg_stat_statements.track_utility": kindBool, "pg_stat_statements.track_planning": kindBool,
	"pg_stat_statements.save": kindBool,
}

// forbiddenSettings would break the clone (it must listen on its own port
// and address with the agent's pg_hba.conf) or let it reach outside its
// data directory (archiving, replication, recovery, loading files, running
// programs). Neither a request nor the operator's clone defaults may set
// them; the reasons make the refusal of a request clearer.
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

// dangerousSettings are refused for requests with the reason (they are
// outside the allowlist anyway); the operator may still set them in
// provision.cloneDefaults.settings.
var dangerousSettings = map[string]string{ //nolint:gosec // setting names and reasons, no credentials
	"shared_preload_libraries":  "it loads a library into the server",
	"session_preload_libraries": "it loads a library into the server",
	"local_preload_libraries":   "it loads a library into the server",
	"jit_provider":              "it loads a library into the server",
	"ssl_passphrase_command":    "it runs a program",
	"recovery_end_command":      "it runs a program",
	"archive_cleanup_command":   "it runs a program",
}

// settingNameRE is a GUC name, including custom "extension.name" ones.
var settingNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$`)

var (
	boolValueRE = regexp.MustCompile(`^(?i)(on|off|true|false|yes|no|1|0)$`)
	// A number with an optional unit: 4MB, 1.5, 30s, -1, 1e6.
	numValueRE  = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\s*[a-zA-Z]{0,3}$`)
	enumValueRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
)

// ValidateSetting checks one postgres setting requested for a clone
// (extra_conf): the name must be in the allowlist and the value fit its
// type, on one line. The error names the setting and what to do instead.
func ValidateSetting(name, value string) error {
	if err := validateNameValue(name, value); err != nil {
		return err
	}
	if why, ok := forbiddenSettings[name]; ok {
		return fmt.Errorf("%s cannot be set per clone: %s", name, why)
	}
	kind, ok := cloneSettings[name]
	if !ok {
		why := ""
		if d, ok := dangerousSettings[name]; ok {
			why = " (" + d + ")"
		}
		return fmt.Errorf("%s is not in the allowlist of settings a clone may change%s: see extra_conf in docs/agent-api.md", name, why)
	}
	var ok2 bool
	var want string
	switch kind {
	case kindBool:
		ok2, want = boolValueRE.MatchString(value), "on or off"
	case kindNum:
		ok2, want = numValueRE.MatchString(value), "a number with an optional unit, e.g. 64MB, 30s or 1.1"
	case kindEnum:
		ok2, want = enumValueRE.MatchString(value), "one word, e.g. all or off"
	default:
		ok2 = true
	}
	if !ok2 {
		return fmt.Errorf("%s = %q is not a valid value: give %s", name, value, want)
	}
	return nil
}

// ValidateDefaultSetting checks one of the operator's clone defaults
// (provision.cloneDefaults.settings). The operator is trusted with what the
// allowlist keeps from requests (preloading libraries, for example), but
// not with settings that break the clone or reach outside it.
func ValidateDefaultSetting(name, value string) error {
	if err := validateNameValue(name, value); err != nil {
		return err
	}
	if why, ok := forbiddenSettings[name]; ok {
		return fmt.Errorf("%s cannot be set per clone: %s", name, why)
	}
	return nil
}

// validateNameValue keeps names to GUC syntax and values to one line, so
// that neither can add a line to a settings file or an argument to a
// command line.
func validateNameValue(name, value string) error {
	if !settingNameRE.MatchString(name) || len(name) > 63 {
		return fmt.Errorf("%q is not a PostgreSQL setting name (lowercase letters, digits and '_', optionally \"ext.name\")", name)
	}
	if len(value) > 1024 {
		return fmt.Errorf("%s: value is longer than 1024 characters", name)
	}
	for _, r := range value {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s: value contains a control character (newline, tab or similar): give it on one line", name)
		}
	}
	return nil
}

// CloneSettingNames lists the allowlist, sorted (for documentation and
// tests).
func CloneSettingNames() []string {
	return slices.Sorted(maps.Keys(cloneSettings))
}
