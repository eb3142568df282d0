package runtime

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/internal/pgcluster"
)

func TestValidateSetting(t *testing.T) {
	for _, tc := range []struct {
		name, value, wantErr string
	}{
		{"statement_timeout", "30s", ""},
		{"work_mem", "64MB", ""},
		{"random_page_cost", "1.1", ""},
		{"enable_seqscan", "off", ""},
		{"jit", "on", ""},
		{"log_min_duration_statement", "-1", ""},
		{"pg_stat_statements.track", "all", ""},
		{"search_path", `"$user", public`, ""},
		{"log_line_prefix", "%m [%p] %q%u@%d ", ""},
		// The settings issue 8 found passing the old blocklist.
		{"shared_preload_libraries", "/tmp/evil.so", "not in the allowlist"},
		{"session_preload_libraries", "evil", "not in the allowlist"},
		{"local_preload_libraries", "evil", "not in the allowlist"},
		{"jit_provider", "/tmp/evil", "not in the allowlist"},
		{"ssl_passphrase_command", "sh -c id", "not in the allowlist"},
		{"recovery_end_command", "sh -c id", "not in the allowlist"},
		{"archive_cleanup_command", "sh -c id", "not in the allowlist"},
		{"log_filename", "../../etc/x", "not in the allowlist"},
		{"unknown_setting", "1", "not in the allowlist"},
		{"auto_explain.log_min_duration", "0", "not in the allowlist"},
		{"port", "5432", "portPool"},
		{"listen_addresses", "*", "listenAddresses"},
		{"data_directory", "/", "fixed"},
		{"hba_file", "/tmp/x", "pg_hba.conf"},
		{"primary_conninfo", "host=prod", "never replicates"},
		{"Statement_Timeout", "1", "not a PostgreSQL setting name"},
		{"a;b", "1", "not a PostgreSQL setting name"},
		// Values stay on one line and fit the setting's type.
		{"work_mem", "1MB\nport = 1", "control character"},
		{"work_mem", "1MB\r", "control character"},
		{"work_mem", "it's fine", "not a valid value"},
		{"work_mem", "1MB' port='1", "not a valid value"},
		{"enable_seqscan", "off -c port=1", "not a valid value"},
		{"log_statement", "all' x", "not a valid value"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			err := ValidateSetting(tc.name, tc.value)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("%s=%q refused (%v), want accepted", tc.name, tc.value, err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("%s=%q: err = %v, want one containing %q", tc.name, tc.value, err, tc.wantErr)
			}
			if err != nil && tc.name == strings.ToLower(tc.name) && !strings.Contains(err.Error(), tc.name) {
				t.Fatalf("error %q does not name the setting %s", err, tc.name)
			}
		})
	}
}

// The operator's clone defaults may preload libraries (trusted), never
// move the clone's port or files.
func TestValidateDefaultSetting(t *testing.T) {
	if err := ValidateDefaultSetting("shared_preload_libraries", "pg_stat_statements"); err != nil {
		t.Fatalf("operator default shared_preload_libraries refused: %v", err)
	}
	if err := ValidateDefaultSetting("port", "1"); err == nil || !strings.Contains(err.Error(), "portPool") {
		t.Fatalf("operator default port: err = %v, want refused naming portPool", err)
	}
	if err := ValidateDefaultSetting("work_mem", "1MB\nport=1"); err == nil {
		t.Fatal("operator default with a newline accepted")
	}
}

// TestCloneSettingsAreRealSettings checks every allowlisted name and its
// kind against the installed postgres (--describe-config), and that the
// allowlist is documented.
func TestCloneSettingsAreRealSettings(t *testing.T) {
	bin, err := pgcluster.NewestBinDir(pgcluster.DefaultBinRoot)
	if err != nil {
		t.Fatalf("no PostgreSQL installed (apt-get install postgresql-15): %v", err)
	}
	out, err := exec.CommandContext(t.Context(), filepath.Join(bin, "postgres"), "--describe-config").Output()
	if err != nil {
		t.Fatalf("postgres --describe-config: %v", err)
	}
	types := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) > 3 {
			types[strings.ToLower(f[0])] = f[3]
		}
	}
	want := map[settingKind][]string{kindBool: {"BOOLEAN"}, kindNum: {"INTEGER", "REAL"}, kindEnum: {"ENUM"}, kindString: {"STRING"}}
	doc, err := os.ReadFile("../../docs/agent-api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range CloneSettingNames() {
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("%s is allowlisted but not documented in docs/agent-api.md", name)
		}
		if strings.HasPrefix(name, "pg_stat_statements.") {
			continue // an extension's setting: not described by the server
		}
		typ, ok := types[name]
		if !ok {
			t.Errorf("%s is allowlisted but postgres does not know it", name)
			continue
		}
		if k := cloneSettings[name]; !strings.Contains(strings.Join(want[k], ","), typ) {
			t.Errorf("%s is %s in postgres, the allowlist's kind says %v", name, typ, want[k])
		}
	}
}
